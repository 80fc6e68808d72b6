package relayobjects

import (
	"bytes"
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/")

func TestBuild_MatchesGolden(t *testing.T) {
	size := resource.MustParse("10Gi")
	tests := []struct {
		name   string
		golden string
		cfg    Config
	}{
		{name: "embedded JetStream on an emptyDir", golden: "embedded.golden.yaml",
			cfg: Config{Namespace: "involveo-webhooks", Image: "example.com/webhook-operator:v1", Replicas: 1}},
		{name: "embedded JetStream on a PVC, syncing every write", golden: "embedded-pvc.golden.yaml",
			cfg: Config{Namespace: "involveo-webhooks", Image: "example.com/webhook-operator:v1", Replicas: 1, StorageSize: &size, SyncInterval: "always"}},
		{name: "external NATS with three replicas", golden: "nats.golden.yaml",
			cfg: Config{Namespace: "involveo-webhooks", Image: "example.com/webhook-operator:v1", Replicas: 3, NATSURL: "nats://nats.messaging:4222"}},
		{name: "external NATS with credentials and mutual TLS from Secrets", golden: "nats-secrets.golden.yaml",
			cfg: Config{Namespace: "involveo-webhooks", Image: "example.com/webhook-operator:v1", Replicas: 2, NATSURL: "tls://nats.messaging:4222",
				NATSReplicas: 5, NATSCredsSecret: "relay-nats-creds", NATSCASecret: "relay-nats-tls", NATSClientCertSecret: "relay-nats-tls"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := marshalAll(t, Build(tt.cfg))
			golden := filepath.Join("testdata", tt.golden)
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("objects differ from %s (run go test -update if intended):\n%s", golden, got)
			}
		})
	}
}

// marshalAll writes every non-nil object as one YAML stream, in field order.
func marshalAll(t *testing.T, objs Objects) []byte {
	t.Helper()
	var out bytes.Buffer
	v := reflect.ValueOf(objs)
	for i := range v.NumField() {
		f := v.Field(i)
		if f.IsNil() {
			continue
		}
		b, err := yaml.Marshal(f.Interface())
		if err != nil {
			t.Fatal(err)
		}
		out.WriteString("---\n")
		out.Write(b)
	}
	return out.Bytes()
}

func TestBuild_Topology(t *testing.T) {
	size := resource.MustParse("1Gi")
	tests := []struct {
		name         string
		cfg          Config
		wantReplicas int32
		wantStrategy appsv1.DeploymentStrategyType
		wantPDB      bool
		wantPVC      bool
	}{
		{name: "runs one replica with the embedded store whatever was asked",
			cfg: Config{Replicas: 3}, wantReplicas: 1, wantStrategy: appsv1.RecreateDeploymentStrategyType},
		{name: "claims a volume only when a size is given",
			cfg: Config{Replicas: 1, StorageSize: &size}, wantReplicas: 1, wantStrategy: appsv1.RecreateDeploymentStrategyType, wantPVC: true},
		{name: "runs the asked replicas with a disruption budget on external NATS",
			cfg: Config{Replicas: 3, NATSURL: "nats://n:4222"}, wantReplicas: 3, wantStrategy: appsv1.RollingUpdateDeploymentStrategyType, wantPDB: true},
		{name: "has no disruption budget for a single replica on external NATS",
			cfg: Config{Replicas: 1, NATSURL: "nats://n:4222", StorageSize: &size}, wantReplicas: 1, wantStrategy: appsv1.RollingUpdateDeploymentStrategyType},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewWithT(t)
			objs := Build(tt.cfg)
			g.Expect(*objs.Deployment.Spec.Replicas).To(Equal(tt.wantReplicas))
			g.Expect(*objs.Deployment.Spec.Strategy.Type).To(Equal(tt.wantStrategy))
			g.Expect(objs.PodDisruptionBudget != nil).To(Equal(tt.wantPDB))
			g.Expect(objs.PersistentVolumeClaim != nil).To(Equal(tt.wantPVC))
		})
	}
}

func TestBuild_RestrictedPodSecurity(t *testing.T) {
	g := NewWithT(t)
	pod := Build(Config{Namespace: "ns", Image: "img"}).Deployment.Spec.Template.Spec
	g.Expect(*pod.SecurityContext.RunAsNonRoot).To(BeTrue())
	g.Expect(string(*pod.SecurityContext.SeccompProfile.Type)).To(Equal("RuntimeDefault"))
	for _, c := range pod.Containers {
		sc := c.SecurityContext
		g.Expect(*sc.AllowPrivilegeEscalation).To(BeFalse())
		g.Expect(*sc.ReadOnlyRootFilesystem).To(BeTrue())
		g.Expect(sc.Capabilities.Drop).To(ConsistOf(BeEquivalentTo("ALL")))
		g.Expect(*c.Resources.Requests).NotTo(BeEmpty())
		g.Expect(*c.Resources.Limits).NotTo(BeEmpty())
	}
}

// TestManagerPodLabels_MatchTheManagerDeployment guards the coupling between the
// NetworkPolicy and config/manager: if the manager's pods lost these labels, it could
// no longer poll the relay's health in a cluster that enforces NetworkPolicies.
func TestManagerPodLabels_MatchTheManagerDeployment(t *testing.T) {
	g := NewWithT(t)
	f, err := os.Open(filepath.Join("..", "..", "config", "manager", "manager.yaml"))
	g.Expect(err).NotTo(HaveOccurred())
	defer f.Close()
	dec := utilyaml.NewYAMLOrJSONDecoder(f, 4096)
	for {
		var d appsv1.Deployment
		if err := dec.Decode(&d); errors.Is(err, io.EOF) {
			break
		} else {
			g.Expect(err).NotTo(HaveOccurred())
		}
		if d.Kind != "Deployment" {
			continue
		}
		for k, v := range ManagerPodLabels() {
			g.Expect(d.Spec.Template.Labels).To(HaveKeyWithValue(k, v))
		}
		return
	}
	t.Fatal("no Deployment in config/manager/manager.yaml")
}

// TestBuild_NATSSecretFlagsPointAtMountedKeys follows each file flag of the relay to a
// volume mount and the Secret key projected there, so a renamed key or path cannot
// leave the relay reading a file that is not in the pod.
func TestBuild_NATSSecretFlagsPointAtMountedKeys(t *testing.T) {
	g := NewWithT(t)
	pod := Build(Config{Namespace: "ns", Image: "img", NATSURL: "tls://n:4222",
		NATSCredsSecret: "creds", NATSCASecret: "tls", NATSClientCertSecret: "tls"}).Deployment.Spec.Template.Spec
	want := map[string]string{"--nats-creds": "creds/nats.creds", "--nats-ca": "tls/ca.crt",
		"--nats-tls-cert": "tls/tls.crt", "--nats-tls-key": "tls/tls.key"}
	got := map[string]string{}
	c := pod.Containers[0]
	for _, arg := range c.Args {
		flag, file, ok := strings.Cut(arg, "=")
		if _, asked := want[flag]; !ok || !asked {
			continue
		}
		for _, m := range c.VolumeMounts {
			rel, under := strings.CutPrefix(file, *m.MountPath+"/")
			if !under {
				continue
			}
			g.Expect(*m.ReadOnly).To(BeTrue())
			for _, v := range pod.Volumes {
				if *v.Name != *m.Name {
					continue
				}
				for _, item := range v.Secret.Items {
					if *item.Path == rel {
						got[flag] = *v.Secret.SecretName + "/" + *item.Key
					}
				}
			}
		}
	}
	g.Expect(got).To(Equal(want))
}
