package kubectlplugin

import (
	"fmt"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/involveo/webhook-operator/internal/health"
)

// defaultListLimit is a screenful; --limit 0 lists everything.
const defaultListLimit = 50

// listFlags are the flags of the relay listings.
type listFlags struct {
	limit  int
	output string
}

func (f *listFlags) bind(cmd *cobra.Command, what string) {
	cmd.Flags().IntVar(&f.limit, "limit", defaultListLimit, "Show at most this many "+what+" (0: all)")
	cmd.Flags().StringVarP(&f.output, "output", "o", outputTable, "Output format: table or json")
}

func (f *listFlags) validate() error {
	if f.limit < 0 {
		return fmt.Errorf("--limit %d: must be 0 (all) or more", f.limit)
	}
	return checkOutput(f.output)
}

// runListing is the command of a per-subscription relay listing: it reads
// every page up to --limit and hands the items to write.
func runListing[T any](o *options, f *listFlags, what, pattern string,
	write func(f listFlags, ns, name string, items []T, more bool) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		if err := f.validate(); err != nil {
			return err
		}
		ns, name, err := o.subscriptionArg(args)
		if err != nil {
			return err
		}
		rc, err := o.relay()
		if err != nil {
			return err
		}
		items, more, err := listPages[T](cmd.Context(), rc, health.SubscriptionPath(pattern, ns, name), f.limit)
		if err != nil {
			return fmt.Errorf("list %s of %s/%s: %w", what, ns, name, err)
		}
		return write(*f, ns, name, items, more)
	}
}

func newAttemptsCommand(o *options) *cobra.Command {
	var f listFlags
	cmd := &cobra.Command{
		Use:   "attempts SUB",
		Short: "Show the relay's delivery log of a subscription, newest first",
		Long: `Show the latest delivery attempts of a subscription from the relay's delivery
log, newest first: when, which delivery and event, which attempt, the
endpoint's status code (or why there was no answer) and the latency.`,
		Example: `  kubectl involveo attempts crm-sync -n team-a
  kubectl involveo attempts crm-sync -n team-a --limit 0 -o json`,
		Args: cobra.ExactArgs(1),
		RunE: runListing(o, &f, "attempts", health.AttemptsPath, o.writeAttempts),
	}
	f.bind(cmd, "attempts")
	return cmd
}

func (o *options) writeAttempts(f listFlags, ns, name string, items []health.Attempt, more bool) error {
	if f.output == outputJSON {
		return writeJSON(o.streams.Out, nonNil(items))
	}
	if len(items) == 0 {
		fmt.Fprintf(o.streams.ErrOut, "No delivery attempts logged for %s/%s.\n", ns, name)
		return nil
	}
	t := newTable(o.streams.Out, "TIME", "DELIVERY", "EVENT", "ATTEMPT", "RESULT", "LATENCY")
	for _, a := range items {
		t.row(timestamp(a.Time), orDash(a.DeliveryID), orDash(a.Event), strconv.Itoa(a.Attempt),
			result(a.StatusCode, a.Reason), latency(a.LatencyMs))
	}
	if err := t.flush(); err != nil {
		return err
	}
	if more {
		fmt.Fprintf(o.streams.ErrOut, "Showing the latest %d attempts; --limit 0 shows all.\n", f.limit)
	}
	return nil
}

func newDeadLettersCommand(o *options) *cobra.Command {
	var f listFlags
	cmd := &cobra.Command{
		Use:     "deadletters SUB",
		Aliases: []string{"dead-letters", "dlq"},
		Short:   "List a subscription's dead letters, oldest first",
		Long: `List the deliveries of a subscription that failed every attempt, oldest first,
with the last failure. 'kubectl involveo redeliver SUB' replays them.`,
		Example: `  kubectl involveo deadletters crm-sync -n team-a
  kubectl involveo deadletters crm-sync -n team-a --limit 0 -o json`,
		Args: cobra.ExactArgs(1),
		RunE: runListing(o, &f, "dead letters", health.DeadLettersPath, o.writeDeadLetters),
	}
	f.bind(cmd, "dead letters")
	return cmd
}

func (o *options) writeDeadLetters(f listFlags, ns, name string, items []health.DeadLetter, more bool) error {
	if f.output == outputJSON {
		return writeJSON(o.streams.Out, nonNil(items))
	}
	if len(items) == 0 {
		fmt.Fprintf(o.streams.ErrOut, "No dead letters for %s/%s.\n", ns, name)
		return nil
	}
	t := newTable(o.streams.Out, "SEQ", "TIME", "DELIVERY", "EVENT", "ATTEMPTS", "REASON")
	for _, d := range items {
		reason := d.Reason
		if reason == "" {
			reason = result(d.StatusCode, "")
		}
		t.row(strconv.FormatUint(d.Seq, 10), timestamp(d.Time), orDash(d.DeliveryID), orDash(d.Event),
			strconv.Itoa(d.Attempts), reason)
	}
	if err := t.flush(); err != nil {
		return err
	}
	if more {
		fmt.Fprintf(o.streams.ErrOut, "Showing the oldest %d dead letters; --limit 0 shows all.\n", f.limit)
	}
	return nil
}

// nonNil makes an empty listing print as [] rather than null, which is what
// jq filters expect.
func nonNil[T any](items []T) []T {
	if items == nil {
		return []T{}
	}
	return items
}
