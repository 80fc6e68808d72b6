package kubectlplugin

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/involveo/webhook-operator/internal/relayobjects"
)

// proxyPath is the API server's service proxy path: namespace, then the
// path on the relay's admin port.
var proxyPath = regexp.MustCompile(`^/api/v1/namespaces/([^/]+)/services/http:webhook-relay:admin/proxy(/.*)$`)

// fakeAPIServer stands in for the API server's service proxy, which refuses
// to proxy to the loopback addresses the test relay listens on. Like the
// real one it strips the proxy prefix and forwards to the relay's admin
// port, and answers a metav1.Status of its own for a namespace the user
// may not proxy into.
type fakeAPIServer struct {
	*httptest.Server
	mu       sync.Mutex
	requests []string
}

func newFakeAPIServer(t *testing.T, relayAdmin, forbiddenNamespace string) *fakeAPIServer {
	target, err := url.Parse(relayAdmin)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeAPIServer{}
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.requests = append(f.requests, r.Method+" "+r.URL.RequestURI())
		f.mu.Unlock()
		m := proxyPath.FindStringSubmatch(r.URL.Path)
		if m == nil {
			http.Error(w, "not a service proxy path", http.StatusNotFound)
			return
		}
		if m[1] == forbiddenNamespace {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusForbidden)
			fmt.Fprintf(w, `{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",`+
				`"message":"services \"webhook-relay\" is forbidden: User \"dev\" cannot get resource \"services/proxy\" in API group \"\" in the namespace \"%s\"",`+
				`"reason":"Forbidden","details":{"name":"webhook-relay","kind":"services"},"code":403}`, m[1])
			return
		}
		proxy := &httputil.ReverseProxy{Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.URL.Path = m[2]
			pr.Out.URL.RawPath = ""
		}}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(f.Close)
	return f
}

func (f *fakeAPIServer) takeRequests() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	r := f.requests
	f.requests = nil
	return r
}

// kubeconfigFor writes a kubeconfig that reaches server without credentials.
func kubeconfigFor(t *testing.T, server string) string {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["fake"] = &clientcmdapi.Cluster{Server: server}
	cfg.AuthInfos["dev"] = &clientcmdapi.AuthInfo{}
	cfg.Contexts["fake"] = &clientcmdapi.Context{Cluster: "fake", AuthInfo: "dev", Namespace: "shop"}
	cfg.CurrentContext = "fake"
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestProxiedRelay_Requests(t *testing.T) {
	ep := newEndpoint(t, 503)
	tr := startRelay(t, "127.0.0.1:0", route("shop/crm", ep.URL, noRetries))
	tr.post(t, "task.created")
	apiserver := newFakeAPIServer(t, tr.admin, "locked")
	p := plugin{kubeconfig: kubeconfigFor(t, apiserver.URL), now: time.Now}
	since := time.Now().Add(-time.Hour).UTC().Truncate(time.Second)
	// The delivery is dead-lettered before the listings below look.
	ep.next(t)
	eventuallyRows(t, asAdmin(), 1, "deadletters", "crm", "-n", "shop", "--relay-url", tr.admin)

	tests := []struct {
		name      string
		args      []string
		wantCalls []string
		wantErr   string
	}{{
		name: "reads the delivery log with GET on the relay Service's admin port in the default relay namespace",
		args: []string{"attempts", "crm", "--limit", "5"},
		wantCalls: []string{
			"GET /api/v1/namespaces/involveo-webhooks/services/http:webhook-relay:admin/proxy/v1/subscriptions/shop/crm/attempts?limit=5",
		},
	}, {
		name: "reads dead letters in the namespace --relay-namespace names",
		args: []string{"deadletters", "crm", "--relay-namespace", "ops", "--limit", "0"},
		wantCalls: []string{
			"GET /api/v1/namespaces/ops/services/http:webhook-relay:admin/proxy/v1/subscriptions/shop/crm/deadletters",
		},
	}, {
		name: "sends a test event with POST",
		args: []string{"send-test", "crm", "-n", "shop"},
		wantCalls: []string{
			"POST /api/v1/namespaces/involveo-webhooks/services/http:webhook-relay:admin/proxy/v1/subscriptions/shop/crm/test",
		},
	}, {
		name: "asks for a direct redelivery with POST and the since time",
		args: []string{"redeliver", "crm", "--direct", "--since", since.Format(time.RFC3339)},
		wantCalls: []string{
			"POST /api/v1/namespaces/involveo-webhooks/services/http:webhook-relay:admin/proxy/v1/subscriptions/shop/crm/redeliver?since=" +
				url.QueryEscape(since.Format(time.RFC3339)),
		},
	}, {
		name: "passes the relay's own error answer through",
		args: []string{"attempts", "nope"},
		wantCalls: []string{
			"GET /api/v1/namespaces/involveo-webhooks/services/http:webhook-relay:admin/proxy/v1/subscriptions/shop/nope/attempts?limit=50",
		},
		wantErr: "list attempts of shop/nope: relay answered 404 Not Found for /v1/subscriptions/shop/nope/attempts: " +
			"subscription shop/nope is not in the loaded routing table",
	}, {
		name: "reports the API server's refusal as the API server's",
		args: []string{"attempts", "crm", "--relay-namespace", "locked"},
		wantCalls: []string{
			"GET /api/v1/namespaces/locked/services/http:webhook-relay:admin/proxy/v1/subscriptions/shop/crm/attempts?limit=50",
		},
		wantErr: `list attempts of shop/crm: reach relay through the API server (service locked/webhook-relay, port admin): ` +
			`services "webhook-relay" is forbidden: User "dev" cannot get resource "services/proxy" in API group "" in the namespace "locked"`,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			apiserver.takeRequests()

			_, _, err := p.run(t, tt.args...)

			if tt.wantErr != "" {
				g.Expect(err).To(MatchError(tt.wantErr))
			} else {
				g.Expect(err).NotTo(HaveOccurred())
			}
			g.Expect(apiserver.takeRequests()).To(Equal(tt.wantCalls))
		})
	}
}

// TestProxiedRelay_RBAC shows that the API server, not the plugin, decides
// who may reach the relay: reading needs get on services/proxy, sending a
// test or redelivering needs create.
func TestProxiedRelay_RBAC(t *testing.T) {
	ctx := context.Background()
	relayNS := newNamespace(t)
	reader := "reader-" + relayNS
	readerKubeconfig, err := userKubeconfig(envtest.User{Name: reader})
	if err != nil {
		t.Fatal(err)
	}
	nobodyKubeconfig, err := userKubeconfig(envtest.User{Name: "nobody-" + relayNS})
	if err != nil {
		t.Fatal(err)
	}
	// The API server authorizes the proxy request against the name in its
	// path, "http:webhook-relay:admin", not the Service's name.
	role := &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Namespace: relayNS, Name: "relay-reader"},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"services/proxy"},
			ResourceNames: []string{"http:webhook-relay:admin"}, Verbs: []string{"get"}}},
	}
	binding := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Namespace: relayNS, Name: "relay-reader"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: role.Name},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: "User", Name: reader}},
	}
	NewWithT(t).Expect(k8s.Create(ctx, role)).To(Succeed())
	NewWithT(t).Expect(k8s.Create(ctx, binding)).To(Succeed())

	tests := []struct {
		name       string
		kubeconfig string
		args       []string
		wantErr    string
	}{{
		name:       "refuses to read the delivery log for a user without get on services/proxy",
		kubeconfig: nobodyKubeconfig,
		args:       []string{"attempts", "crm"},
		wantErr:    `cannot get resource "services/proxy" in API group "" in the namespace "` + relayNS + `"`,
	}, {
		name:       "lets a user with get on services/proxy through to the Service",
		kubeconfig: readerKubeconfig,
		args:       []string{"attempts", "crm"},
		// Authorized: the API server looks for the relay's endpoints,
		// which this namespace has none of.
		wantErr: `no endpoints available for service "webhook-relay"`,
	}, {
		name:       "refuses to send a test event for a user without create on services/proxy",
		kubeconfig: readerKubeconfig,
		args:       []string{"send-test", "crm"},
		wantErr:    `cannot create resource "services/proxy" in API group "" in the namespace "` + relayNS + `"`,
	}, {
		name:       "refuses a direct redelivery for a user without create on services/proxy",
		kubeconfig: readerKubeconfig,
		args:       []string{"redeliver", "crm", "--direct"},
		wantErr:    `cannot create resource "services/proxy" in API group "" in the namespace "` + relayNS + `"`,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := plugin{kubeconfig: tt.kubeconfig, now: time.Now}
			_, _, err := p.run(t, append(tt.args, "-n", "shop", "--relay-namespace", relayNS)...)
			NewWithT(t).Expect(err).To(MatchError(ContainSubstring(tt.wantErr)))
		})
	}
}

// hostIP is a non-loopback IPv4 address of this machine: the API server
// proxies only to addresses a pod could have.
// hostIP is the address to publish the relay on, from INVOLVEO_PROXY_TEST_IP.
// The API server refuses to proxy to loopback, so this test needs an address
// of the machine's own; it is opt-in because test traffic here stays on
// loopback unless someone chooses an address they own (a network namespace
// of their own, say).
func hostIP() (string, bool) {
	ip := os.Getenv("INVOLVEO_PROXY_TEST_IP")
	return ip, net.ParseIP(ip) != nil
}

// TestProxiedRelay_ThroughAPIServer runs the commands through the real
// kube-apiserver's service proxy to a relay listening on this machine's
// address, published as the webhook-relay Service's endpoint the way the
// endpoint controller would.
func TestProxiedRelay_ThroughAPIServer(t *testing.T) {
	ip, ok := hostIP()
	if !ok {
		t.Skip("set INVOLVEO_PROXY_TEST_IP to an address of this machine: the API server does not proxy to loopback")
	}
	g := NewWithT(t)
	ep := newEndpoint(t, 200)
	tr := startRelay(t, net.JoinHostPort(ip, "0"), route("shop/crm", ep.URL, ""))
	u, err := url.Parse(tr.admin)
	g.Expect(err).NotTo(HaveOccurred())
	port, err := strconv.Atoi(u.Port())
	g.Expect(err).NotTo(HaveOccurred())
	relayNS := newNamespace(t)
	publishRelay(t, relayNS, ip, int32(port))
	p := asAdmin()

	// The API server finds endpoints through its informer, a moment after
	// they are created.
	g.Eventually(func() error {
		_, _, err := p.run(t, "attempts", "crm", "-n", "shop", "--relay-namespace", relayNS)
		return err
	}, settle, 100*time.Millisecond).Should(Succeed())

	stdout, _ := p.mustRun(t, "send-test", "crm", "-n", "shop", "--relay-namespace", relayNS)
	g.Expect(stdout).To(MatchRegexp(`^\S+\n$`))
	got := ep.next(t)
	logged := eventuallyRows(t, p, 1, "attempts", "crm", "-n", "shop", "--relay-namespace", relayNS)
	g.Expect(logged[0][1:5]).To(HaveExactElements(got.header.Get("X-Involveo-Delivery"), "task.created", "1", "200"))
}

// publishRelay creates the relay's Service, a Pod standing for the relay
// with the relay's address, and the EndpointSlice tying them, which is what
// the API server's service proxy resolves.
func publishRelay(t *testing.T, ns, ip string, port int32) {
	t.Helper()
	ctx := context.Background()
	g := NewWithT(t)
	// No controller manager runs, so the default ServiceAccount that pod
	// admission looks up has to be made by hand.
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "default"}}
	if err := k8s.Create(ctx, sa); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "webhook-relay-0"},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "relay", Image: "relay"}}},
	}
	g.Expect(k8s.Create(ctx, pod)).To(Succeed())
	pod.Status.PodIP = ip
	pod.Status.PodIPs = []corev1.PodIP{{IP: ip}}
	g.Expect(k8s.Status().Update(ctx, pod)).To(Succeed())
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: relayobjects.Name},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{
			Name: relayobjects.AdminPortName, Port: relayobjects.AdminPort, Protocol: corev1.ProtocolTCP,
		}}},
	}
	g.Expect(k8s.Create(ctx, svc)).To(Succeed())
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: relayobjects.Name + "-0",
			Labels: map[string]string{discoveryv1.LabelServiceName: relayobjects.Name}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints: []discoveryv1.Endpoint{{
			Addresses:  []string{ip},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)},
			TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: pod.Name},
		}},
		Ports: []discoveryv1.EndpointPort{{Name: ptr.To(relayobjects.AdminPortName), Port: ptr.To(port),
			Protocol: ptr.To(corev1.ProtocolTCP)}},
	}
	g.Expect(k8s.Create(ctx, slice)).To(Succeed())
}
