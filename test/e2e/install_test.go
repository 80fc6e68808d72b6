package e2e

import (
	"context"
	"fmt"
	"os/exec"
	"sort"
	"testing"

	. "github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/involveo/webhook-operator/internal/devenv"
	"github.com/involveo/webhook-operator/internal/testenv"
)

// render runs a tool of the hack/tools module from the repository root.
func render(t *testing.T, tool string, args ...string) []*unstructured.Unstructured {
	t.Helper()
	cmd := exec.Command("go", append([]string{"tool", "-modfile=hack/tools/go.mod", tool}, args...)...)
	cmd.Dir = testenv.RepoRoot()
	out, err := cmd.Output()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			t.Fatalf("%s %v: %v\n%s", tool, args, err, ee.Stderr)
		}
		t.Fatalf("%s %v: %v", tool, args, err)
	}
	objs, err := devenv.DecodeManifests(out)
	if err != nil {
		t.Fatalf("decode %s output: %v", tool, err)
	}
	return objs
}

func kindNames(objs []*unstructured.Unstructured) []string {
	var out []string
	for _, o := range objs {
		if o.GetKind() == "Namespace" {
			continue // Helm installs into an existing release namespace.
		}
		out = append(out, fmt.Sprintf("%s %s/%s", o.GetKind(), o.GetNamespace(), o.GetName()))
	}
	sort.Strings(out)
	return out
}

// dryRunApply server-side applies every object without persisting it, so
// the API server validates each against its schema and admission.
func dryRunApply(g Gomega, objs []*unstructured.Unstructured) {
	for _, o := range objs {
		err := env.Client.Apply(context.Background(), client.ApplyConfigurationFromUnstructured(o),
			client.FieldOwner("install-test"), client.ForceOwnership, client.DryRunAll)
		g.Expect(err).NotTo(HaveOccurred(), "%s %s", o.GetKind(), o.GetName())
	}
}

func TestInstall_KustomizeAndHelmRenderTheSameValidObjects(t *testing.T) {
	g := NewWithT(t)
	kustomized := render(t, "kustomize", "build", "config/default")
	charted := render(t, "helm", "template", "involveo-webhooks", "dist/chart", "--namespace", "involveo-webhooks", "--include-crds")
	g.Expect(kustomized).NotTo(BeEmpty())
	g.Expect(kindNames(charted)).To(Equal(kindNames(kustomized)))

	// The operator namespace exists in the local environment; every other
	// object is validated by the API server.
	dryRunApply(g, kustomized)
	dryRunApply(g, charted)
}

func TestInstall_HelmPassesTheNATSSettingsToTheManager(t *testing.T) {
	g := NewWithT(t)
	charted := render(t, "helm", "template", "involveo-webhooks", "dist/chart", "--namespace", "involveo-webhooks",
		"--set", "relay.replicas=3", "--set", "relay.natsURL=tls://nats.nats:4222", "--set", "relay.natsReplicas=5",
		"--set", "relay.nats.credsSecret=relay-creds", "--set", "relay.nats.caSecret=relay-tls",
		"--set", "relay.nats.clientCertSecret=relay-tls")
	var args []string
	for _, o := range charted {
		if o.GetKind() != "Deployment" {
			continue
		}
		containers, _, err := unstructured.NestedSlice(o.Object, "spec", "template", "spec", "containers")
		g.Expect(err).NotTo(HaveOccurred())
		a, _, err := unstructured.NestedStringSlice(containers[0].(map[string]any), "args")
		g.Expect(err).NotTo(HaveOccurred())
		args = append(args, a...)
	}
	g.Expect(args).To(ContainElements("--relay-replicas=3", "--nats-url=tls://nats.nats:4222", "--nats-replicas=5",
		"--nats-creds-secret=relay-creds", "--nats-ca-secret=relay-tls", "--nats-client-cert-secret=relay-tls"))
	dryRunApply(g, charted)
}
