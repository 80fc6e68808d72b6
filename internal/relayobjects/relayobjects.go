// Package relayobjects builds the Kubernetes objects that run the shared relay in the
// operator namespace: its ServiceAccount, Role and RoleBinding, the Deployment, the
// Service, a PodDisruptionBudget when it has several replicas, a NetworkPolicy, and the
// data PersistentVolumeClaim when one is asked for.
//
// The builders are pure and return server-side-apply configurations. None of them takes
// the subscriptions: the relay hot-reloads its routes, so a subscription change must not
// touch the pod template and restart relay pods.
package relayobjects

import (
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/intstr"
	appsv1ac "k8s.io/client-go/applyconfigurations/apps/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"
	networkingv1ac "k8s.io/client-go/applyconfigurations/networking/v1"
	policyv1ac "k8s.io/client-go/applyconfigurations/policy/v1"
	rbacv1ac "k8s.io/client-go/applyconfigurations/rbac/v1"

	"github.com/involveo/webhook-operator/internal/routing"
)

// Names of the relay's objects (DESIGN §4b: the Deployment and Service are a contract).
const (
	// Name is the name of the Deployment, Service, ServiceAccount, Role, RoleBinding,
	// PodDisruptionBudget and NetworkPolicy.
	Name = "webhook-relay"
	// DataClaimName is the PersistentVolumeClaim holding the embedded JetStream store.
	DataClaimName = "webhook-relay-data"
	// ContainerName is the relay container in the pod template.
	ContainerName = "relay"
)

// Ports of the relay (DESIGN §4).
const (
	// IngestPort takes events (POST /v1/events); the Service port named "ingest".
	IngestPort = 8080
	// AdminPort serves /healthz, /readyz, /metrics and /v1/subscriptions; the Service
	// port named "admin", polled by the manager.
	AdminPort = 9090
	// IngestPortName and AdminPortName name the ports in the pod and the Service.
	IngestPortName = "ingest"
	AdminPortName  = "admin"
)

// Labels and label values the objects carry.
const (
	// ManagedByLabel marks objects the manager owns; its cache selects by it.
	ManagedByLabel = "app.kubernetes.io/managed-by"
	// ManagedBy is the value of ManagedByLabel, and the server-side-apply field owner.
	ManagedBy = "involveo-webhook-manager"
	// IngestNamespaceLabel set to "true" on a namespace lets its pods post events to
	// the relay through the NetworkPolicy.
	IngestNamespaceLabel = "webhooks.involveo.io/ingest"
)

// Pod settings.
const (
	// relayCommand is the relay binary in the image both binaries ship in.
	relayCommand = "/relay"
	// dataDir is where the embedded JetStream server keeps its files.
	dataDir = "/var/lib/webhook-relay"
	// nonRootID is the distroless "nonroot" user and group; fsGroup makes the data
	// volume writable for it.
	nonRootID = 65532
	// natsSecretsDir holds one read-only directory per NATS Secret mounted.
	natsSecretsDir = "/etc/involveo-webhooks/nats"
	// terminationGracePeriod leaves the relay its 25s default shutdown timeout to
	// finish running attempts, plus time to flush acknowledgements.
	terminationGracePeriod = 30
)

// Keys of the NATS Secrets. The CA and client certificate keys are those cert-manager
// writes, so one cert-manager Certificate's Secret can serve as both.
const (
	NATSCredsKey = "nats.creds"
	NATSCAKey    = "ca.crt"
)

// Resources of the relay container. The memory limit bounds the embedded JetStream
// server's caches and is handed to the Go runtime as GOMEMLIMIT so the collector works
// harder before the kernel kills the pod; CPU is not limited, which would only throttle
// delivery bursts.
var (
	cpuRequest    = resource.MustParse("100m")
	memoryRequest = resource.MustParse("128Mi")
	memoryLimit   = resource.MustParse("512Mi")
)

// cloudMetadataCIDRs are the instance metadata endpoints of the major clouds (IPv4 for
// all of them, AWS's IPv6 one). They hand out node credentials, so relay pods, which
// POST to user-supplied URLs, may not reach them even if the relay's own SSRF checks
// were bypassed.
var cloudMetadataCIDRs = struct{ ipv4, ipv6 []string }{
	ipv4: []string{"169.254.169.254/32"},
	ipv6: []string{"fd00:ec2::254/128"},
}

// Config is what the manager's flags decide about the relay.
type Config struct {
	// Namespace is the operator namespace, where everything lives.
	Namespace string
	// Image is the relay image.
	Image string
	// Replicas is the number of relay pods; ignored (always 1) without NATSURL.
	Replicas int32
	// NATSURL is an external JetStream; empty runs the embedded server, which keeps its
	// store on local storage and so allows one replica only.
	NATSURL string
	// NATSReplicas is the stream replication factor on the external JetStream;
	// 0 leaves the relay's default (3).
	NATSReplicas int
	// NATSCredsSecret, with NATSURL, names a Secret in Namespace whose key
	// NATSCredsKey is the NATS credentials file (user JWT and seed) of the relay.
	NATSCredsSecret string
	// NATSCASecret, with NATSURL, names a Secret in Namespace whose key NATSCAKey holds
	// the CA certificates that signed the NATS servers' certificates.
	NATSCASecret string
	// NATSClientCertSecret, with NATSURL, names a kubernetes.io/tls Secret in Namespace
	// (tls.crt, tls.key) whose certificate the relay presents for mutual TLS.
	NATSClientCertSecret string
	// StorageSize, with the embedded server, puts the store on a PersistentVolumeClaim
	// of this size. Without it the store is an emptyDir: it survives container
	// restarts but not the pod's deletion or rescheduling, which loses pending retries
	// and events not yet fanned out.
	StorageSize *resource.Quantity
	// SyncInterval, with the embedded server, is the relay's --sync-interval:
	// "always" or a duration; empty keeps JetStream's default (two minutes).
	SyncInterval string
}

// Embedded reports whether the relay runs its own JetStream server.
func (c Config) Embedded() bool { return c.NATSURL == "" }

// EffectiveReplicas is the replica count the Deployment gets.
func (c Config) EffectiveReplicas() int32 {
	if c.Embedded() || c.Replicas < 1 {
		return 1
	}
	return c.Replicas
}

// Objects are the relay's objects, each nil when the configuration does not call for it.
type Objects struct {
	ServiceAccount        *corev1ac.ServiceAccountApplyConfiguration
	Role                  *rbacv1ac.RoleApplyConfiguration
	RoleBinding           *rbacv1ac.RoleBindingApplyConfiguration
	PersistentVolumeClaim *corev1ac.PersistentVolumeClaimApplyConfiguration
	Deployment            *appsv1ac.DeploymentApplyConfiguration
	Service               *corev1ac.ServiceApplyConfiguration
	PodDisruptionBudget   *policyv1ac.PodDisruptionBudgetApplyConfiguration
	NetworkPolicy         *networkingv1ac.NetworkPolicyApplyConfiguration
}

// Labels are the labels of every relay object; the pods carry them too.
func Labels() map[string]string {
	l := SelectorLabels()
	l["app.kubernetes.io/part-of"] = "involveo-webhooks"
	l[ManagedByLabel] = ManagedBy
	return l
}

// SelectorLabels select the relay pods. They are part of the Deployment's immutable
// selector, so they must never change.
func SelectorLabels() map[string]string {
	return map[string]string{
		"app.kubernetes.io/name":      Name,
		"app.kubernetes.io/component": "relay",
	}
}

// ManagerPodLabels select the manager's pods, the only pods the NetworkPolicy lets
// reach the admin port. config/manager/manager.yaml gives the manager's pod template
// these labels; the two must change together.
func ManagerPodLabels() map[string]string {
	return map[string]string{
		"app.kubernetes.io/name": "involveo-webhooks",
		"control-plane":          "controller-manager",
	}
}

// Build returns the objects for cfg.
func Build(cfg Config) Objects {
	objs := Objects{
		ServiceAccount: corev1ac.ServiceAccount(Name, cfg.Namespace).WithLabels(Labels()),
		Role:           role(cfg),
		RoleBinding:    roleBinding(cfg),
		Deployment:     deployment(cfg),
		Service:        service(cfg),
		NetworkPolicy:  networkPolicy(cfg),
	}
	if cfg.Embedded() && cfg.StorageSize != nil {
		objs.PersistentVolumeClaim = corev1ac.PersistentVolumeClaim(DataClaimName, cfg.Namespace).
			WithLabels(Labels()).
			WithSpec(corev1ac.PersistentVolumeClaimSpec().
				WithAccessModes(corev1.ReadWriteOnce).
				WithResources(corev1ac.VolumeResourceRequirements().
					WithRequests(corev1.ResourceList{corev1.ResourceStorage: *cfg.StorageSize})))
	}
	if cfg.EffectiveReplicas() > 1 {
		objs.PodDisruptionBudget = policyv1ac.PodDisruptionBudget(Name, cfg.Namespace).
			WithLabels(Labels()).
			WithSpec(policyv1ac.PodDisruptionBudgetSpec().
				WithMaxUnavailable(intstr.FromInt32(1)).
				WithSelector(metav1ac.LabelSelector().WithMatchLabels(SelectorLabels())))
	}
	return objs
}

// role lets the relay read exactly the routing ConfigMap and the credentials Secret:
// no other Secret in the namespace, and no write access to anything.
func role(cfg Config) *rbacv1ac.RoleApplyConfiguration {
	read := []string{"get", "list", "watch"}
	return rbacv1ac.Role(Name, cfg.Namespace).
		WithLabels(Labels()).
		WithRules(
			rbacv1ac.PolicyRule().WithAPIGroups("").WithResources("configmaps").
				WithResourceNames(routing.ConfigMapName).WithVerbs(read...),
			rbacv1ac.PolicyRule().WithAPIGroups("").WithResources("secrets").
				WithResourceNames(routing.CredentialsSecretName).WithVerbs(read...),
		)
}

func roleBinding(cfg Config) *rbacv1ac.RoleBindingApplyConfiguration {
	return rbacv1ac.RoleBinding(Name, cfg.Namespace).
		WithLabels(Labels()).
		WithRoleRef(rbacv1ac.RoleRef().WithAPIGroup("rbac.authorization.k8s.io").WithKind("Role").WithName(Name)).
		WithSubjects(rbacv1ac.Subject().WithKind("ServiceAccount").WithName(Name).WithNamespace(cfg.Namespace))
}

func deployment(cfg Config) *appsv1ac.DeploymentApplyConfiguration {
	// The embedded store is a local file store: two pods must never run at once, not
	// even during an update, or the second would fail to lock it (PVC) or start empty.
	strategy := appsv1ac.DeploymentStrategy().WithType(appsv1.RecreateDeploymentStrategyType)
	if !cfg.Embedded() {
		// Rolling updates are safe with a shared external JetStream. The parameters are
		// spelled out so that they are owned by the manager and removed with it if the
		// strategy switches back to Recreate (the API refuses Recreate with them set).
		strategy = appsv1ac.DeploymentStrategy().WithType(appsv1.RollingUpdateDeploymentStrategyType).
			WithRollingUpdate(appsv1ac.RollingUpdateDeployment().
				WithMaxUnavailable(intstr.FromInt32(0)).
				WithMaxSurge(intstr.FromInt32(1)))
	}
	return appsv1ac.Deployment(Name, cfg.Namespace).
		WithLabels(Labels()).
		WithSpec(appsv1ac.DeploymentSpec().
			WithReplicas(cfg.EffectiveReplicas()).
			WithSelector(metav1ac.LabelSelector().WithMatchLabels(SelectorLabels())).
			WithStrategy(strategy).
			WithTemplate(corev1ac.PodTemplateSpec().
				WithLabels(Labels()).
				WithSpec(podSpec(cfg))))
}

func podSpec(cfg Config) *corev1ac.PodSpecApplyConfiguration {
	spec := corev1ac.PodSpec().
		WithServiceAccountName(Name).
		WithTerminationGracePeriodSeconds(terminationGracePeriod).
		WithSecurityContext(corev1ac.PodSecurityContext().
			WithRunAsNonRoot(true).
			WithRunAsUser(nonRootID).
			WithRunAsGroup(nonRootID).
			WithFSGroup(nonRootID).
			WithSeccompProfile(corev1ac.SeccompProfile().WithType(corev1.SeccompProfileTypeRuntimeDefault))).
		WithContainers(container(cfg))
	if !cfg.Embedded() {
		for _, m := range natsSecretMounts(cfg) {
			spec.WithVolumes(m.volume())
		}
		return spec
	}
	data := corev1ac.Volume().WithName("data").WithEmptyDir(corev1ac.EmptyDirVolumeSource())
	if cfg.StorageSize != nil {
		data = corev1ac.Volume().WithName("data").
			WithPersistentVolumeClaim(corev1ac.PersistentVolumeClaimVolumeSource().WithClaimName(DataClaimName))
	}
	return spec.WithVolumes(data)
}

func container(cfg Config) *corev1ac.ContainerApplyConfiguration {
	args := []string{
		"--namespace=" + cfg.Namespace,
		fmt.Sprintf("--listen=:%d", IngestPort),
		fmt.Sprintf("--admin-listen=:%d", AdminPort),
	}
	if cfg.Embedded() {
		args = append(args, "--data-dir="+dataDir)
		if cfg.SyncInterval != "" {
			args = append(args, "--sync-interval="+cfg.SyncInterval)
		}
	} else {
		// Each replica enforces its share of a subscription's rate limit.
		args = append(args, "--nats-url="+cfg.NATSURL, fmt.Sprintf("--replicas=%d", cfg.EffectiveReplicas()))
		if cfg.NATSReplicas > 0 {
			args = append(args, fmt.Sprintf("--nats-replicas=%d", cfg.NATSReplicas))
		}
		for _, m := range natsSecretMounts(cfg) {
			for _, k := range m.keys {
				args = append(args, fmt.Sprintf("--%s=%s", k.flag, m.path(k.key)))
			}
		}
	}
	probe := func(path string, period, failures int32) *corev1ac.ProbeApplyConfiguration {
		return corev1ac.Probe().
			WithHTTPGet(corev1ac.HTTPGetAction().WithPath(path).WithPort(intstr.FromString(AdminPortName))).
			WithPeriodSeconds(period).
			WithFailureThreshold(failures)
	}
	c := corev1ac.Container().
		WithName(ContainerName).
		WithImage(cfg.Image).
		WithCommand(relayCommand).
		WithArgs(args...).
		WithPorts(
			corev1ac.ContainerPort().WithName(IngestPortName).WithContainerPort(IngestPort).WithProtocol(corev1.ProtocolTCP),
			corev1ac.ContainerPort().WithName(AdminPortName).WithContainerPort(AdminPort).WithProtocol(corev1.ProtocolTCP),
		).
		// The divisor is the default (bytes) spelled out: the selector is applied as a
		// whole, so a field left to the server's default would read back as drift.
		WithEnv(corev1ac.EnvVar().WithName("GOMEMLIMIT").WithValueFrom(corev1ac.EnvVarSource().
			WithResourceFieldRef(corev1ac.ResourceFieldSelector().WithContainerName(ContainerName).
				WithResource("limits.memory").WithDivisor(resource.MustParse("1"))))).
		// Liveness only asks whether the process answers; readiness also waits for
		// the queue and the first routing table, so a relay without routes gets no
		// traffic but is not restarted.
		WithLivenessProbe(probe("/healthz", 10, 3)).
		WithReadinessProbe(probe("/readyz", 5, 2)).
		WithResources(corev1ac.ResourceRequirements().
			WithRequests(corev1.ResourceList{corev1.ResourceCPU: cpuRequest, corev1.ResourceMemory: memoryRequest}).
			WithLimits(corev1.ResourceList{corev1.ResourceMemory: memoryLimit})).
		WithSecurityContext(corev1ac.SecurityContext().
			WithAllowPrivilegeEscalation(false).
			WithReadOnlyRootFilesystem(true).
			WithRunAsNonRoot(true).
			WithCapabilities(corev1ac.Capabilities().WithDrop("ALL")))
	if cfg.Embedded() {
		c.WithVolumeMounts(corev1ac.VolumeMount().WithName("data").WithMountPath(dataDir))
	}
	for _, m := range natsSecretMounts(cfg) {
		c.WithVolumeMounts(corev1ac.VolumeMount().WithName(m.name).WithMountPath(m.dir()).WithReadOnly(true))
	}
	return c
}

// natsSecretMount is a Secret mounted for the relay's NATS connection, and the relay
// flag each of its keys is passed to as a file path.
type natsSecretMount struct {
	name, secret string
	keys         []struct{ key, flag string }
}

func (m natsSecretMount) dir() string            { return natsSecretsDir + "/" + m.name }
func (m natsSecretMount) path(key string) string { return m.dir() + "/" + key }

// volume projects only the keys the relay reads, readable by its group (fsGroup).
func (m natsSecretMount) volume() *corev1ac.VolumeApplyConfiguration {
	src := corev1ac.SecretVolumeSource().WithSecretName(m.secret).WithDefaultMode(0o440)
	for _, k := range m.keys {
		src.WithItems(corev1ac.KeyToPath().WithKey(k.key).WithPath(k.key))
	}
	return corev1ac.Volume().WithName(m.name).WithSecret(src)
}

// natsSecretMounts are the Secrets cfg names, in a fixed order so the pod template
// is stable. The kubelet refreshes mounted Secrets and the relay reads these files on
// every (re)connect, so rotated credentials and certificates need no pod restart.
func natsSecretMounts(cfg Config) []natsSecretMount {
	type keyFlag = struct{ key, flag string }
	var out []natsSecretMount
	if cfg.NATSCredsSecret != "" {
		out = append(out, natsSecretMount{name: "nats-creds", secret: cfg.NATSCredsSecret,
			keys: []keyFlag{{NATSCredsKey, "nats-creds"}}})
	}
	if cfg.NATSCASecret != "" {
		out = append(out, natsSecretMount{name: "nats-ca", secret: cfg.NATSCASecret,
			keys: []keyFlag{{NATSCAKey, "nats-ca"}}})
	}
	if cfg.NATSClientCertSecret != "" {
		out = append(out, natsSecretMount{name: "nats-client-cert", secret: cfg.NATSClientCertSecret,
			keys: []keyFlag{{corev1.TLSCertKey, "nats-tls-cert"}, {corev1.TLSPrivateKeyKey, "nats-tls-key"}}})
	}
	return out
}

func service(cfg Config) *corev1ac.ServiceApplyConfiguration {
	return corev1ac.Service(Name, cfg.Namespace).
		WithLabels(Labels()).
		WithSpec(corev1ac.ServiceSpec().
			WithType(corev1.ServiceTypeClusterIP).
			WithSelector(SelectorLabels()).
			WithPorts(
				corev1ac.ServicePort().WithName(IngestPortName).WithPort(IngestPort).
					WithTargetPort(intstr.FromString(IngestPortName)).WithProtocol(corev1.ProtocolTCP),
				corev1ac.ServicePort().WithName(AdminPortName).WithPort(AdminPort).
					WithTargetPort(intstr.FromString(AdminPortName)).WithProtocol(corev1.ProtocolTCP),
			))
}

// networkPolicy lets events in from namespaces labelled IngestNamespaceLabel=true, the
// admin port be reached by the manager only, and deliveries go anywhere but the cloud
// metadata endpoints. Prometheus scraping /metrics needs its own, additional policy.
func networkPolicy(cfg Config) *networkingv1ac.NetworkPolicyApplyConfiguration {
	port := func(p int32) *networkingv1ac.NetworkPolicyPortApplyConfiguration {
		return networkingv1ac.NetworkPolicyPort().WithProtocol(corev1.ProtocolTCP).WithPort(intstr.FromInt32(p))
	}
	return networkingv1ac.NetworkPolicy(Name, cfg.Namespace).
		WithLabels(Labels()).
		WithSpec(networkingv1ac.NetworkPolicySpec().
			WithPodSelector(metav1ac.LabelSelector().WithMatchLabels(SelectorLabels())).
			WithPolicyTypes(networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress).
			WithIngress(
				networkingv1ac.NetworkPolicyIngressRule().
					WithPorts(port(IngestPort)).
					WithFrom(networkingv1ac.NetworkPolicyPeer().WithNamespaceSelector(
						metav1ac.LabelSelector().WithMatchLabels(map[string]string{IngestNamespaceLabel: "true"}))),
				networkingv1ac.NetworkPolicyIngressRule().
					WithPorts(port(AdminPort)).
					WithFrom(networkingv1ac.NetworkPolicyPeer().WithPodSelector(
						metav1ac.LabelSelector().WithMatchLabels(ManagerPodLabels()))),
			).
			WithEgress(networkingv1ac.NetworkPolicyEgressRule().WithTo(
				networkingv1ac.NetworkPolicyPeer().WithIPBlock(networkingv1ac.IPBlock().
					WithCIDR("0.0.0.0/0").WithExcept(cloudMetadataCIDRs.ipv4...)),
				networkingv1ac.NetworkPolicyPeer().WithIPBlock(networkingv1ac.IPBlock().
					WithCIDR("::/0").WithExcept(cloudMetadataCIDRs.ipv6...)),
			)))
}
