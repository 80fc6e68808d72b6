// Package kubectlplugin is kubectl-involveo, the day-2 tool for
// WebhookSubscriptions: health at a glance from the API server, the relay's
// delivery log and dead letters, replays and test deliveries.
//
// It uses the caller's kubeconfig and reaches the relay's admin API through
// the API server's service proxy, so no port-forward is needed and the API
// server checks RBAC: get (attempts, deadletters) and create (send-test,
// redeliver --direct) on services/proxy in the operator namespace. The
// proxy authorizes the name in its path, so a Role that narrows the rule
// with resourceNames must name "http:webhook-relay:admin", not the
// Service. --relay-url talks to a relay directly instead (`make dev`).
package kubectlplugin

import (
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	v1alpha1 "github.com/involveo/webhook-operator/api/v1alpha1"
)

// defaultRelayNamespace is the manager's default --namespace (DESIGN §4b),
// where the relay's Service lives.
const defaultRelayNamespace = "involveo-webhooks"

// directRelayTimeout bounds one request to a relay reached with --relay-url;
// the admin endpoints answer from local state, so anything longer is a hang.
const directRelayTimeout = 30 * time.Second

// subscriptionsResource is the WebhookSubscription resource. The plugin reads
// and patches it with the dynamic client so that status fields newer than
// this binary (status.replay) survive decoding.
var subscriptionsResource = v1alpha1.GroupVersion.WithResource("webhooksubscriptions")

// Streams are where a command writes its output and its notes.
type Streams struct {
	Out    io.Writer
	ErrOut io.Writer
}

// options are the flags every command shares and what they resolve to.
type options struct {
	streams   Streams
	loading   *clientcmd.ClientConfigLoadingRules
	overrides *clientcmd.ConfigOverrides
	// relayNamespace holds the relay's Service (--relay-namespace).
	relayNamespace string
	// relayURL bypasses the service proxy (--relay-url).
	relayURL string
	// now is the clock ages and --since are computed against.
	now func() time.Time
}

// NewCommand builds the kubectl-involveo command tree.
func NewCommand(streams Streams) *cobra.Command {
	return newCommand(streams, time.Now)
}

func newCommand(streams Streams, now func() time.Time) *cobra.Command {
	o := &options{
		streams:   streams,
		loading:   clientcmd.NewDefaultClientConfigLoadingRules(),
		overrides: &clientcmd.ConfigOverrides{},
		now:       now,
	}
	root := &cobra.Command{
		Use:   "kubectl-involveo",
		Short: "Inspect and operate Involveo webhook subscriptions",
		Long: `Inspect and operate Involveo webhook subscriptions: their health, the relay's
delivery log and dead letters, replays after an outage, and test deliveries.

The relay's admin API is reached through the API server's service proxy
(services/proxy on the relay Service in --relay-namespace), so RBAC applies
and no port-forward is needed; --relay-url talks to a relay directly.`,
		Annotations: map[string]string{
			// kubectl runs the binary as "kubectl involveo"; usage lines say so.
			cobra.CommandDisplayNameAnnotation: "kubectl involveo",
		},
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(streams.Out)
	root.SetErr(streams.ErrOut)

	flags := root.PersistentFlags()
	flags.StringVar(&o.loading.ExplicitPath, clientcmd.RecommendedConfigPathFlag, "",
		"Path to the kubeconfig file to use")
	clientcmd.BindOverrideFlags(o.overrides, flags, clientcmd.RecommendedConfigOverrideFlags(""))
	flags.StringVar(&o.relayNamespace, "relay-namespace", defaultRelayNamespace,
		"Namespace of the webhook-relay Service (the manager's --namespace)")
	flags.StringVar(&o.relayURL, "relay-url", "",
		"Base URL of the relay's admin port, bypassing the API server (e.g. http://127.0.0.1:9090 under make dev)")

	root.AddCommand(
		newGetCommand(o),
		newAttemptsCommand(o),
		newDeadLettersCommand(o),
		newRedeliverCommand(o),
		newSendTestCommand(o),
	)
	return root
}

// clientConfig is the kubeconfig as the flags amend it.
func (o *options) clientConfig() clientcmd.ClientConfig {
	return clientcmd.NewNonInteractiveDeferredLoadingClientConfig(o.loading, o.overrides)
}

// namespace is -n, else the kubeconfig context's namespace, else "default",
// as kubectl resolves it.
func (o *options) namespace() (string, error) {
	ns, _, err := o.clientConfig().Namespace()
	if err != nil {
		return "", fmt.Errorf("resolve namespace: %w", err)
	}
	return ns, nil
}

func (o *options) restConfig() (*rest.Config, error) {
	cfg, err := o.clientConfig().ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("load kubeconfig: %w", err)
	}
	cfg.UserAgent = "kubectl-involveo"
	return cfg, nil
}

// subscriptions is the dynamic client for WebhookSubscriptions in ns ("" for
// all namespaces).
func (o *options) subscriptions(ns string) (dynamic.ResourceInterface, error) {
	cfg, err := o.restConfig()
	if err != nil {
		return nil, err
	}
	dc, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("build client: %w", err)
	}
	res := dc.Resource(subscriptionsResource)
	if ns == "" {
		return res, nil
	}
	return res.Namespace(ns), nil
}

// relay is the client of the relay's admin API the flags select.
func (o *options) relay() (relayClient, error) {
	if o.relayURL != "" {
		return newDirectRelay(o.relayURL, &http.Client{Timeout: directRelayTimeout})
	}
	cfg, err := o.restConfig()
	if err != nil {
		return nil, err
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("build client: %w", err)
	}
	return newProxiedRelay(cs.CoreV1(), o.relayNamespace), nil
}

// subscriptionArg resolves SUB, the one positional argument of the
// per-subscription commands, to its namespace and name.
func (o *options) subscriptionArg(args []string) (namespace, name string, err error) {
	ns, err := o.namespace()
	if err != nil {
		return "", "", err
	}
	return ns, args[0], nil
}
