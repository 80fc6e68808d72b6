package kubectlplugin

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/involveo/webhook-operator/internal/health"
)

func newSendTestCommand(o *options) *cobra.Command {
	return &cobra.Command{
		Use:   "send-test SUB",
		Short: "Deliver a test task.created to a subscription's endpoint now",
		Long: `Ask the relay to deliver a test task.created event, marked as a test, to one
subscription's endpoint now, with its usual key, headers, signing and retries.
Prints the event id; 'kubectl involveo attempts SUB' shows how it went.`,
		Example: `  kubectl involveo send-test crm-sync -n team-a`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ns, name, err := o.subscriptionArg(args)
			if err != nil {
				return err
			}
			rc, err := o.relay()
			if err != nil {
				return err
			}
			path := health.SubscriptionPath(health.TestPath, ns, name)
			res, err := postJSON[testResult](cmd.Context(), rc, path, nil)
			if err != nil {
				return fmt.Errorf("send a test event to %s/%s: %w", ns, name, err)
			}
			fmt.Fprintln(o.streams.Out, res.ID)
			if res.Deliveries == 0 {
				fmt.Fprintf(o.streams.ErrOut, "The relay stored test event %s but queued no delivery for %s/%s.\n", res.ID, ns, name)
				return nil
			}
			fmt.Fprintf(o.streams.ErrOut, "Test event %s queued for %s/%s; see: kubectl involveo attempts %s -n %s\n",
				res.ID, ns, name, name, ns)
			return nil
		},
	}
}
