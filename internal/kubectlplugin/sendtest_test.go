package kubectlplugin

import (
	"encoding/json"
	"strings"
	"testing"

	. "github.com/onsi/gomega"
)

func TestSendTest_DeliversNow(t *testing.T) {
	g := NewWithT(t)
	ep := newEndpoint(t, 200)
	tr := startRelay(t, "127.0.0.1:0", route("shop/crm", ep.URL, ""))
	p := asAdmin()

	stdout, stderr := p.mustRun(t, "send-test", "crm", "-n", "shop", "--relay-url", tr.admin)

	id := strings.TrimSuffix(stdout, "\n")
	g.Expect(id).To(MatchRegexp(`^\S+$`), "stdout is the event id alone, for scripts")
	g.Expect(stderr).To(Equal("Test event " + id + " queued for shop/crm; see: kubectl involveo attempts crm -n shop\n"))
	got := ep.next(t)
	g.Expect(got.header.Get("X-Involveo-Event")).To(Equal("task.created"))
	g.Expect(got.header.Get("X-Api-Key")).To(Equal("key"))
	var body struct {
		Event string `json:"event"`
		Test  bool   `json:"test"`
	}
	g.Expect(json.Unmarshal(got.body, &body)).To(Succeed())
	g.Expect(body.Event).To(Equal("task.created"))
	g.Expect(body.Test).To(BeTrue(), "the event is marked as a test")
	// The delivery shows up in the delivery log.
	logged := eventuallyRows(t, p, 1, "attempts", "crm", "-n", "shop", "--relay-url", tr.admin)
	g.Expect(logged[0][1:5]).To(HaveExactElements(got.header.Get("X-Involveo-Delivery"), "task.created", "1", "200"))
}

func TestSendTest_UnknownSubscription(t *testing.T) {
	tr := startRelay(t, "127.0.0.1:0", route("shop/crm", "http://127.0.0.1:1/hook", ""))

	_, _, err := asAdmin().run(t, "send-test", "nope", "-n", "shop", "--relay-url", tr.admin)

	NewWithT(t).Expect(err).To(MatchError("send a test event to shop/nope: relay answered 404 Not Found for " +
		"/v1/subscriptions/shop/nope/test: subscription shop/nope is not in the loaded routing table"))
}
