package kubectlplugin

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	v1alpha1 "github.com/involveo/webhook-operator/api/v1alpha1"
)

func newGetCommand(o *options) *cobra.Command {
	var allNamespaces bool
	cmd := &cobra.Command{
		Use:   "get",
		Short: "List subscriptions with their readiness and delivery health",
		Long: `List WebhookSubscriptions with their readiness, delivery health and delivery
counts, as the manager last wrote them to status.`,
		Example: `  kubectl involveo get -n team-a
  kubectl involveo get -A`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ns := ""
			if !allNamespaces {
				var err error
				if ns, err = o.namespace(); err != nil {
					return err
				}
			}
			return o.runGet(cmd, ns)
		},
	}
	cmd.Flags().BoolVarP(&allNamespaces, "all-namespaces", "A", false,
		"List subscriptions in every namespace")
	return cmd
}

func (o *options) runGet(cmd *cobra.Command, ns string) error {
	client, err := o.subscriptions(ns)
	if err != nil {
		return err
	}
	list, err := client.List(cmd.Context(), metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("list webhooksubscriptions: %w", err)
	}
	subs := make([]v1alpha1.WebhookSubscription, 0, len(list.Items))
	for _, u := range list.Items {
		var s v1alpha1.WebhookSubscription
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &s); err != nil {
			return fmt.Errorf("decode webhooksubscription %s/%s: %w", u.GetNamespace(), u.GetName(), err)
		}
		subs = append(subs, s)
	}
	if len(subs) == 0 {
		if ns == "" {
			fmt.Fprintln(o.streams.ErrOut, "No resources found")
		} else {
			fmt.Fprintf(o.streams.ErrOut, "No resources found in %s namespace.\n", ns)
		}
		return nil
	}
	slices.SortFunc(subs, func(a, b v1alpha1.WebhookSubscription) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	return writeSubscriptions(o.streams, subs, ns == "", o.now())
}

// getColumns are the columns of `get`; NAMESPACE is added in front with -A,
// as kubectl does.
var getColumns = []string{"NAME", "URL", "READY", "HEALTHY", "DELIVERED", "FAILED", "DEAD", "PENDING", "LAST SUCCESS"}

func writeSubscriptions(streams Streams, subs []v1alpha1.WebhookSubscription, withNamespace bool, now time.Time) error {
	header := getColumns
	if withNamespace {
		header = append([]string{"NAMESPACE"}, getColumns...)
	}
	t := newTable(streams.Out, header...)
	for _, s := range subs {
		d := s.Status.Delivery
		if d == nil {
			d = &v1alpha1.DeliveryStatus{}
		}
		cells := []string{
			s.Name,
			s.Spec.Endpoint.URL,
			conditionCell(s.Status.Conditions, v1alpha1.ConditionReady),
			conditionCell(s.Status.Conditions, v1alpha1.ConditionDeliveryHealthy),
			strconv.FormatInt(d.Succeeded, 10),
			strconv.FormatInt(d.Failed, 10),
			strconv.FormatInt(d.DeadLettered, 10),
			strconv.FormatInt(d.PendingRetries, 10),
			age(now, d.LastSuccessTime),
		}
		if withNamespace {
			cells = append([]string{s.Namespace}, cells...)
		}
		t.row(cells...)
	}
	return t.flush()
}
