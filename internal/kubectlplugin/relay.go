package kubectlplugin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilnet "k8s.io/apimachinery/pkg/util/net"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"

	"github.com/involveo/webhook-operator/internal/health"
	"github.com/involveo/webhook-operator/internal/relayobjects"
)

// maxRelayAnswerBytes bounds what is read from the relay: a page of 500
// attempts is about 100 KiB, so 8 MiB only stops a misdirected URL from
// streaming something huge into memory.
const maxRelayAnswerBytes = 8 << 20

// relayClient calls the relay's admin API. path is a health.*Path filled
// with health.SubscriptionPath.
type relayClient interface {
	get(ctx context.Context, path string, query url.Values) ([]byte, error)
	post(ctx context.Context, path string, query url.Values) ([]byte, error)
}

// relayError is a non-2xx answer of the relay itself (as opposed to one of
// the API server refusing to proxy).
type relayError struct {
	path    string
	code    int
	message string
}

func (e *relayError) Error() string {
	msg := fmt.Sprintf("relay answered %d %s for %s", e.code, http.StatusText(e.code), e.path)
	if e.message != "" {
		msg += ": " + e.message
	}
	return msg
}

// newRelayError reads the relay's {"error": "..."} answer; a body that is
// not one (Go's "404 page not found" from a relay without the endpoint) is
// kept as text.
func newRelayError(path string, code int, body []byte) *relayError {
	var answer struct {
		Error string `json:"error"`
	}
	msg := strings.TrimSpace(string(body))
	if json.Unmarshal(body, &answer) == nil && answer.Error != "" {
		msg = answer.Error
	} else if code == http.StatusNotFound {
		msg += " (this relay may predate the endpoint: upgrade it)"
	}
	return &relayError{path: path, code: code, message: msg}
}

// directRelay reaches the relay's admin port over plain HTTP (--relay-url).
type directRelay struct {
	base   *url.URL
	client *http.Client
}

func newDirectRelay(base string, client *http.Client) (*directRelay, error) {
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("--relay-url %q: want an absolute http(s) URL such as http://127.0.0.1:9090", base)
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	return &directRelay{base: u, client: client}, nil
}

func (d *directRelay) get(ctx context.Context, path string, query url.Values) ([]byte, error) {
	return d.do(ctx, http.MethodGet, path, query)
}

func (d *directRelay) post(ctx context.Context, path string, query url.Values) ([]byte, error) {
	return d.do(ctx, http.MethodPost, path, query)
}

func (d *directRelay) do(ctx context.Context, method, path string, query url.Values) ([]byte, error) {
	u := *d.base
	u.Path += path
	u.RawQuery = query.Encode()
	req, err := http.NewRequestWithContext(ctx, method, u.String(), nil)
	if err != nil {
		return nil, fmt.Errorf("build request for %s: %w", path, err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := d.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("reach relay at %s: %w", d.base, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxRelayAnswerBytes))
	if err != nil {
		return nil, fmt.Errorf("read relay answer for %s: %w", path, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, newRelayError(path, resp.StatusCode, body)
	}
	return body, nil
}

// proxiedRelay reaches the relay's admin port through the API server's
// service proxy: /api/v1/namespaces/NS/services/http:webhook-relay:admin/proxy/PATH.
// The API server authorizes the caller for services/proxy (get for GET,
// create for POST) and picks a ready relay endpoint.
type proxiedRelay struct {
	core      corev1client.CoreV1Interface
	namespace string
}

func newProxiedRelay(core corev1client.CoreV1Interface, namespace string) *proxiedRelay {
	return &proxiedRelay{core: core, namespace: namespace}
}

// serviceName is the proxy's "scheme:name:port" form naming the admin port.
func (p *proxiedRelay) serviceName() string {
	return utilnet.JoinSchemeNamePort("http", relayobjects.Name, relayobjects.AdminPortName)
}

func (p *proxiedRelay) get(ctx context.Context, path string, query url.Values) ([]byte, error) {
	params := make(map[string]string, len(query))
	for k := range query {
		params[k] = query.Get(k)
	}
	body, err := p.core.Services(p.namespace).
		ProxyGet("http", relayobjects.Name, relayobjects.AdminPortName, path, params).
		DoRaw(ctx)
	return body, p.wrap(path, body, err)
}

func (p *proxiedRelay) post(ctx context.Context, path string, query url.Values) ([]byte, error) {
	req := p.core.RESTClient().Post().
		Namespace(p.namespace).
		Resource("services").
		Name(p.serviceName()).
		SubResource("proxy").
		Suffix(path)
	for k := range query {
		req = req.Param(k, query.Get(k))
	}
	body, err := req.DoRaw(ctx)
	return body, p.wrap(path, body, err)
}

// wrap tells the relay's own error answers, which the proxy passes through,
// from the API server's (RBAC, no ready relay endpoint), which come as a
// metav1.Status and say best what went wrong. DoRaw does not read that
// Status into the error ("unknown"), so it is decoded here.
func (p *proxiedRelay) wrap(path string, body []byte, err error) error {
	if err == nil {
		return nil
	}
	if status, ok := kubernetesStatus(body); ok {
		err = &apierrors.StatusError{ErrStatus: status}
	} else if apiStatus := apierrors.APIStatus(nil); errors.As(err, &apiStatus) {
		return newRelayError(path, int(apiStatus.Status().Code), body)
	}
	return fmt.Errorf("reach relay through the API server (service %s/%s, port %s): %w",
		p.namespace, relayobjects.Name, relayobjects.AdminPortName, err)
}

// kubernetesStatus decodes an answer of the API server itself.
func kubernetesStatus(body []byte) (metav1.Status, bool) {
	var status metav1.Status
	if json.Unmarshal(bytes.TrimSpace(body), &status) != nil || status.Kind != "Status" {
		return metav1.Status{}, false
	}
	return status, true
}

// pagedFetchLimit caps the pages one listing follows, so a relay that keeps
// answering the same cursor cannot loop the command forever.
const pagedFetchLimit = 10000

// listPages reads a paginated listing (health.Page) from path, following
// "next" until limit items were read (limit 0: all). more reports that the
// relay has items beyond limit.
func listPages[T any](ctx context.Context, rc relayClient, path string, limit int) (items []T, more bool, err error) {
	after := ""
	for range pagedFetchLimit {
		q := url.Values{}
		if limit > 0 {
			q.Set("limit", strconv.Itoa(limit-len(items)))
		}
		if after != "" {
			q.Set("after", after)
		}
		body, err := rc.get(ctx, path, q)
		if err != nil {
			return nil, false, err
		}
		var page health.Page[T]
		if err := json.Unmarshal(body, &page); err != nil {
			return nil, false, fmt.Errorf("decode relay answer for %s: %w", path, err)
		}
		items = append(items, page.Items...)
		if limit > 0 && len(items) >= limit {
			return items[:limit], len(items) > limit || page.Next != "", nil
		}
		if page.Next == "" {
			return items, false, nil
		}
		if page.Next == after || len(page.Items) == 0 {
			return nil, false, fmt.Errorf("relay paginates %s without progress (cursor %q)", path, page.Next)
		}
		after = page.Next
	}
	return nil, false, fmt.Errorf("relay paginates %s beyond %d pages", path, pagedFetchLimit)
}

// testResult answers health.TestPath.
type testResult struct {
	ID         string `json:"id"`
	Deliveries int    `json:"deliveries"`
}

func postJSON[T any](ctx context.Context, rc relayClient, path string, query url.Values) (T, error) {
	var out T
	body, err := rc.post(ctx, path, query)
	if err != nil {
		return out, err
	}
	if err := json.Unmarshal(body, &out); err != nil {
		return out, fmt.Errorf("decode relay answer for %s: %w", path, err)
	}
	return out, nil
}
