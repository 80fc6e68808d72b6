package devenv

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"
)

// maskedHeaders are shown with their value hidden: the demo prints what a
// receiver gets, and a terminal scrollback is no place for credentials.
var maskedHeaders = map[string]bool{"X-Api-Key": true, "Authorization": true}

// Receiver is the demo endpoint: it answers 200 and prints every delivery.
type Receiver struct {
	Addr string
	out  io.Writer
	mu   sync.Mutex
	srv  *http.Server
	n    int
}

// StartReceiver listens on addr and prints deliveries to out.
func StartReceiver(addr string, out io.Writer) (*Receiver, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("demo receiver: %w", err)
	}
	r := &Receiver{Addr: ln.Addr().String(), out: out}
	r.srv = &http.Server{Handler: r, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = r.srv.Serve(ln) }()
	return r, nil
}

// Close stops the receiver.
func (r *Receiver) Close() { _ = r.srv.Close() }

func (r *Receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(io.LimitReader(req.Body, 1<<20))
	r.mu.Lock()
	defer r.mu.Unlock()
	r.n++
	var b strings.Builder
	fmt.Fprintf(&b, "\n\033[1;32m── delivery #%d\033[0m  %s %s  \033[2m%s\033[0m\n", r.n, req.Method, req.URL.Path,
		time.Now().Format("15:04:05"))
	names := make([]string, 0, len(req.Header))
	for name := range req.Header {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		value := strings.Join(req.Header[name], ", ")
		if maskedHeaders[name] {
			value = mask(value)
		}
		fmt.Fprintf(&b, "   \033[33m%-21s\033[0m %s\n", name+":", value)
	}
	var pretty bytes.Buffer
	if json.Indent(&pretty, body, "   ", "  ") == nil {
		fmt.Fprintf(&b, "   %s\n", pretty.String())
	} else {
		fmt.Fprintf(&b, "   %s\n", body)
	}
	fmt.Fprint(r.out, b.String())
	w.WriteHeader(http.StatusOK)
}

// mask keeps enough of a value to tell two keys apart.
func mask(v string) string {
	if len(v) <= 4 {
		return "****"
	}
	return v[:2] + strings.Repeat("*", min(len(v)-4, 12)) + v[len(v)-2:]
}
