package kubectlplugin

import (
	"encoding/json"
	"net"
	"regexp"
	"strconv"
	"testing"
	"time"

	. "github.com/onsi/gomega"

	"github.com/involveo/webhook-operator/internal/health"
)

// latencyCell is how the LATENCY column prints a duration.
var latencyCell = regexp.MustCompile(`^[0-9]+(\.[0-9])?(ms|s)$`)

// closedURL is an endpoint nothing listens on, so attempts fail without an
// HTTP status.
func closedURL(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return "http://" + addr + "/hook"
}

func TestAttempts_DeliveryLog(t *testing.T) {
	up, down := newEndpoint(t, 200), newEndpoint(t, 503)
	tr := startRelay(t, "127.0.0.1:0",
		route("shop/up", up.URL, ""),
		route("shop/down", down.URL, "    retry: {maxRetries: 1, interval: 1s}\n"),
		route("shop/gone", closedURL(t), noRetries))
	tr.post(t, "task.created")
	tr.post(t, "task.published")
	p := asAdmin()

	t.Run("lists successful attempts with their status code", func(t *testing.T) {
		g := NewWithT(t)
		body := eventuallyRows(t, p, 2, "attempts", "up", "-n", "shop", "--relay-url", tr.admin)
		stdout, _ := p.mustRun(t, "attempts", "up", "-n", "shop", "--relay-url", tr.admin)
		header, _ := rows(stdout)
		g.Expect(header).To(HaveExactElements("TIME", "DELIVERY", "EVENT", "ATTEMPT", "RESULT", "LATENCY"))
		for _, row := range body {
			g.Expect(row).To(HaveLen(6))
			_, err := time.Parse(time.RFC3339, row[0])
			g.Expect(err).NotTo(HaveOccurred(), "TIME %q", row[0])
			g.Expect(row[1]).NotTo(Equal("-"))
			g.Expect(row[3:5]).To(HaveExactElements("1", "200"))
			g.Expect(row[5]).To(MatchRegexp(latencyCell.String()))
		}
		g.Expect([]string{body[0][2], body[1][2]}).To(ConsistOf("task.created", "task.published"))
	})

	t.Run("lists retries newest first with the failing status code", func(t *testing.T) {
		g := NewWithT(t)
		body := eventuallyRows(t, p, 4, "attempts", "down", "-n", "shop", "--relay-url", tr.admin)
		var attempts, results []string
		for _, row := range body {
			attempts = append(attempts, row[3])
			results = append(results, row[4])
		}
		g.Expect(attempts).To(HaveExactElements("2", "2", "1", "1"))
		g.Expect(results).To(HaveEach("503"))
		// Both attempts of a delivery carry its id.
		g.Expect([]string{body[0][1], body[1][1]}).To(ConsistOf(body[2][1], body[3][1]))
	})

	t.Run("shows why there was no answer when the endpoint is unreachable", func(t *testing.T) {
		g := NewWithT(t)
		body := eventuallyRows(t, p, 2, "attempts", "gone", "-n", "shop", "--relay-url", tr.admin)
		for _, row := range body {
			g.Expect(row[4]).NotTo(MatchRegexp(`^[0-9]+$`))
			g.Expect(row[4]).NotTo(Equal("-"))
		}
	})

	t.Run("shows the latest attempts up to --limit and says there are more", func(t *testing.T) {
		g := NewWithT(t)
		all := eventuallyRows(t, p, 4, "attempts", "down", "-n", "shop", "--relay-url", tr.admin)
		stdout, stderr := p.mustRun(t, "attempts", "down", "-n", "shop", "--relay-url", tr.admin, "--limit", "1")
		_, body := rows(stdout)
		g.Expect(body).To(Equal(all[:1]))
		g.Expect(stderr).To(Equal("Showing the latest 1 attempts; --limit 0 shows all.\n"))
	})

	t.Run("prints the attempts as JSON with -o json", func(t *testing.T) {
		g := NewWithT(t)
		stdout, _ := p.mustRun(t, "attempts", "down", "-n", "shop", "--relay-url", tr.admin, "-o", "json")
		var got []health.Attempt
		g.Expect(json.Unmarshal([]byte(stdout), &got)).To(Succeed())
		g.Expect(got).To(HaveLen(4))
		for _, a := range got {
			g.Expect(a.OK).To(BeFalse())
			g.Expect(a.StatusCode).To(Equal(503))
		}
	})
}

func TestAttempts_Errors(t *testing.T) {
	tr := startRelay(t, "127.0.0.1:0", route("shop/up", "http://127.0.0.1:1/hook", ""))
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{{
		name:    "reports the relay's answer for a subscription it does not route",
		args:    []string{"attempts", "nope", "-n", "shop", "--relay-url", tr.admin},
		wantErr: "list attempts of shop/nope: relay answered 404 Not Found for /v1/subscriptions/shop/nope/attempts: subscription shop/nope is not in the loaded routing table",
	}, {
		name:    "reports an unreachable relay",
		args:    []string{"attempts", "up", "-n", "shop", "--relay-url", "http://127.0.0.1:1"},
		wantErr: "list attempts of shop/up: reach relay at http://127.0.0.1:1: ",
	}, {
		name:    "refuses a relay URL that is not an absolute http URL",
		args:    []string{"attempts", "up", "-n", "shop", "--relay-url", "127.0.0.1:9090"},
		wantErr: `--relay-url "127.0.0.1:9090": want an absolute http(s) URL such as http://127.0.0.1:9090`,
	}, {
		name:    "refuses a negative --limit",
		args:    []string{"attempts", "up", "-n", "shop", "--relay-url", tr.admin, "--limit", "-1"},
		wantErr: "--limit -1: must be 0 (all) or more",
	}, {
		name:    "refuses an unknown output format",
		args:    []string{"attempts", "up", "-n", "shop", "--relay-url", tr.admin, "-o", "yaml"},
		wantErr: `--output "yaml": want table or json`,
	}, {
		name:    "needs the subscription's name",
		args:    []string{"attempts", "-n", "shop", "--relay-url", tr.admin},
		wantErr: "accepts 1 arg(s), received 0",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := asAdmin().run(t, tt.args...)
			NewWithT(t).Expect(err).To(MatchError(HavePrefix(tt.wantErr)))
		})
	}
}

func TestDeadLetters_List(t *testing.T) {
	down := newEndpoint(t, 503)
	tr := startRelay(t, "127.0.0.1:0", route("shop/down", down.URL, noRetries))
	for _, e := range []string{"task.created", "task.published", "task.deleted"} {
		tr.post(t, e)
	}
	p := asAdmin()

	t.Run("lists dead letters oldest first with the last failure", func(t *testing.T) {
		g := NewWithT(t)
		body := eventuallyRows(t, p, 3, "deadletters", "down", "-n", "shop", "--relay-url", tr.admin)
		stdout, _ := p.mustRun(t, "deadletters", "down", "-n", "shop", "--relay-url", tr.admin)
		header, _ := rows(stdout)
		g.Expect(header).To(HaveExactElements("SEQ", "TIME", "DELIVERY", "EVENT", "ATTEMPTS", "REASON"))
		var events []string
		previous := uint64(0)
		for _, row := range body {
			g.Expect(row).To(HaveLen(6))
			seq, err := strconv.ParseUint(row[0], 10, 64)
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(seq).To(BeNumerically(">", previous), "oldest first")
			previous = seq
			_, err = time.Parse(time.RFC3339, row[1])
			g.Expect(err).NotTo(HaveOccurred(), "TIME %q", row[1])
			events = append(events, row[3])
			g.Expect(row[4]).To(Equal("1"))
			g.Expect(row[5]).To(ContainSubstring("503"))
		}
		g.Expect(events).To(ConsistOf("task.created", "task.published", "task.deleted"))
	})

	t.Run("shows the oldest dead letters up to --limit and says there are more", func(t *testing.T) {
		g := NewWithT(t)
		all := eventuallyRows(t, p, 3, "deadletters", "down", "-n", "shop", "--relay-url", tr.admin)
		stdout, stderr := p.mustRun(t, "deadletters", "down", "-n", "shop", "--relay-url", tr.admin, "--limit", "2")
		_, body := rows(stdout)
		g.Expect(body).To(Equal(all[:2]))
		g.Expect(stderr).To(Equal("Showing the oldest 2 dead letters; --limit 0 shows all.\n"))
	})

	t.Run("says so when a subscription has none", func(t *testing.T) {
		g := NewWithT(t)
		empty := startRelay(t, "127.0.0.1:0", route("shop/fine", down.URL, ""))
		stdout, stderr := p.mustRun(t, "deadletters", "fine", "-n", "shop", "--relay-url", empty.admin)
		g.Expect(stdout).To(BeEmpty())
		g.Expect(stderr).To(Equal("No dead letters for shop/fine.\n"))
		stdout, _ = p.mustRun(t, "deadletters", "fine", "-n", "shop", "--relay-url", empty.admin, "-o", "json")
		g.Expect(stdout).To(Equal("[]\n"))
	})
}

func TestDeadLetters_FollowsPages(t *testing.T) {
	g := NewWithT(t)
	down := newEndpoint(t, 503)
	tr := startRelay(t, "127.0.0.1:0", route("shop/down", down.URL, noRetries))
	// More than one page of the relay's default page size (50).
	const n = 60
	for range n {
		tr.post(t, "task.created")
	}
	p := asAdmin()

	body := eventuallyRows(t, p, n, "deadletters", "down", "-n", "shop", "--relay-url", tr.admin, "--limit", "0")

	seen := map[string]bool{}
	for _, row := range body {
		g.Expect(seen).NotTo(HaveKey(row[2]), "each dead letter once")
		seen[row[2]] = true
	}
	stdout, _ := p.mustRun(t, "deadletters", "down", "-n", "shop", "--relay-url", tr.admin, "-o", "json", "--limit", "0")
	var got []health.DeadLetter
	g.Expect(json.Unmarshal([]byte(stdout), &got)).To(Succeed())
	g.Expect(got).To(HaveLen(n))
}
