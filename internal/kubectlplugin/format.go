package kubectlplugin

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/duration"
)

// Output formats of the listing commands.
const (
	outputTable = "table"
	outputJSON  = "json"
)

// table writes aligned columns the way kubectl's printers do.
type table struct {
	w *tabwriter.Writer
}

func newTable(out io.Writer, header ...string) *table {
	t := &table{w: tabwriter.NewWriter(out, 6, 4, 3, ' ', 0)}
	t.row(header...)
	return t
}

func (t *table) row(cells ...string) {
	fmt.Fprintln(t.w, strings.Join(cells, "\t"))
}

func (t *table) flush() error {
	return t.w.Flush()
}

func writeJSON(out io.Writer, v any) error {
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func checkOutput(format string) error {
	if format != outputTable && format != outputJSON {
		return fmt.Errorf("--output %q: want %s or %s", format, outputTable, outputJSON)
	}
	return nil
}

// conditionCell shows a condition as "Status (Reason)", the two facts a
// glance needs; the message is in kubectl describe.
func conditionCell(conditions []metav1.Condition, conditionType string) string {
	c := meta.FindStatusCondition(conditions, conditionType)
	if c == nil {
		return string(metav1.ConditionUnknown)
	}
	if c.Reason == "" {
		return string(c.Status)
	}
	return fmt.Sprintf("%s (%s)", c.Status, c.Reason)
}

// age is how long before now t was, in kubectl's AGE format ("5m", "3d4h").
func age(now time.Time, t *metav1.Time) string {
	if t == nil || t.IsZero() {
		return "never"
	}
	return duration.HumanDuration(now.Sub(t.Time))
}

// timestamp is a log time in UTC to the second, comparable across the
// relay's replicas and the user's clock.
func timestamp(t time.Time) string {
	return t.UTC().Format(time.RFC3339)
}

// latency prints sub-millisecond precision only where it means something.
func latency(ms float64) string {
	switch {
	case ms < 10:
		return strconv.FormatFloat(ms, 'f', 1, 64) + "ms"
	case ms < 1000:
		return strconv.FormatFloat(ms, 'f', 0, 64) + "ms"
	default:
		return strconv.FormatFloat(ms/1000, 'f', 1, 64) + "s"
	}
}

// result is an attempt's outcome: the status code when the endpoint
// answered, else why there was no answer (timeout, refused connection).
func result(statusCode int, reason string) string {
	if statusCode != 0 {
		return strconv.Itoa(statusCode)
	}
	if reason == "" {
		return "-"
	}
	return reason
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
