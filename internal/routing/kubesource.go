package routing

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	corev1informers "k8s.io/client-go/informers/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// KubernetesSource loads routes from the routing ConfigMap and the credentials Secret
// and reloads them when either changes.
//
// It lists and watches exactly those two objects, each through an informer restricted by
// the field selector metadata.name=<name>, so a Role granting get, list and watch with
// resourceNames is all the relay needs: no access to other Secrets, no write access.
//
// Until both objects exist and load, OnChange is not called and Loaded reports false, so
// the relay stays not ready rather than crashing. Afterwards a change that does not load,
// or the deletion of either object, is logged and the last good routes stay in force:
// the manager recreates the objects, and delivering to a known table meanwhile beats
// delivering to none.
type KubernetesSource struct {
	// Client reads the two objects.
	Client kubernetes.Interface
	// Namespace holds both objects: the operator namespace.
	Namespace string
	// ConfigMapName is the routing ConfigMap, normally ConfigMapName.
	ConfigMapName string
	// SecretName is the credentials Secret, normally CredentialsSecretName.
	SecretName string
	// Log receives one line per load, per refused reload and per missing object.
	Log logr.Logger
	// OnChange is called with each newly loaded table that differs from the previous
	// one, never concurrently.
	OnChange func(*Routes)

	pub publisher
}

// Current returns the last loaded routes, or nil before the first load.
func (s *KubernetesSource) Current() *Routes { return s.pub.current.Load() }

// Loaded reports whether a table has been loaded; the relay is not ready before.
func (s *KubernetesSource) Loaded() bool { return s.Current() != nil }

// Run watches the two objects and loads routes whenever either changes, until ctx is
// done. It returns an error only for a misconfigured source.
func (s *KubernetesSource) Run(ctx context.Context) error {
	if s.Client == nil || s.Namespace == "" || s.ConfigMapName == "" || s.SecretName == "" {
		return errors.New("kubernetes routing source needs a client, a namespace, a ConfigMap name and a Secret name")
	}
	configMaps := corev1informers.NewFilteredConfigMapInformer(s.Client, s.Namespace, 0, cache.Indexers{}, byName(s.ConfigMapName))
	secrets := corev1informers.NewFilteredSecretInformer(s.Client, s.Namespace, 0, cache.Indexers{}, byName(s.SecretName))

	// One buffered slot coalesces a burst of events into one reload, and funnels both
	// informers' events into this goroutine so loads never run concurrently.
	changed := make(chan struct{}, 1)
	notify := func() {
		select {
		case changed <- struct{}{}:
		default:
		}
	}
	handler := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { notify() },
		UpdateFunc: func(any, any) { notify() },
		DeleteFunc: func(any) { notify() },
	}
	for _, informer := range []cache.SharedIndexInformer{configMaps, secrets} {
		if err := informer.SetTransform(dropManagedFields); err != nil {
			return fmt.Errorf("watch routing objects: %w", err)
		}
		if _, err := informer.AddEventHandler(handler); err != nil {
			return fmt.Errorf("watch routing objects: %w", err)
		}
	}

	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { configMaps.RunWithContext(ctx) })
	wg.Go(func() { secrets.RunWithContext(ctx) })

	s.Log.Info("watching routing objects", "namespace", s.Namespace, "configMap", s.ConfigMapName, "secret", s.SecretName)
	// Until both informers have listed, an absent object may merely be unlisted yet.
	if !cache.WaitForCacheSync(ctx.Done(), configMaps.HasSynced, secrets.HasSynced) {
		return nil
	}
	l := kubeLoader{source: s, configMaps: configMaps.GetStore(), secrets: secrets.GetStore()}
	l.load()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
			l.load()
		}
	}
}

// byName restricts a list/watch to the one object the relay may read.
func byName(name string) func(*metav1.ListOptions) {
	selector := fields.OneTermEqualSelector("metadata.name", name).String()
	return func(o *metav1.ListOptions) { o.FieldSelector = selector }
}

// dropManagedFields saves keeping server-side-apply bookkeeping, which can be as large
// as the table, in the informer caches.
func dropManagedFields(obj any) (any, error) {
	if accessor, err := meta.Accessor(obj); err == nil {
		accessor.SetManagedFields(nil)
	}
	return obj, nil
}

// kubeLoader turns the informers' current view into routes.
type kubeLoader struct {
	source     *KubernetesSource
	configMaps cache.Store
	secrets    cache.Store
	// missing is the last "object missing" message, logged once per state rather than
	// on every event.
	missing string
}

func (l *kubeLoader) load() {
	s := l.source
	cm, cmOK := getTyped[*corev1.ConfigMap](l.configMaps, s.Namespace, s.ConfigMapName)
	secret, secretOK := getTyped[*corev1.Secret](l.secrets, s.Namespace, s.SecretName)
	if !cmOK || !secretOK {
		l.reportMissing(cmOK, secretOK)
		return
	}
	l.missing = ""

	kv := []any{"configMap", s.Namespace + "/" + s.ConfigMapName, "secret", s.Namespace + "/" + s.SecretName}
	if current := s.Current(); current != nil {
		kv = append(kv, "keptRevision", current.Revision)
	}
	table, err := DecodeConfigMap(cm)
	if err != nil {
		s.Log.Error(err, "routing table not loaded", kv...)
		return
	}
	// While the manager updates the two objects one after the other, the ConfigMap may
	// name a key the Secret does not have yet; the Secret's update event retries.
	routes, err := Compile(table, secret.Data)
	if err != nil {
		s.Log.Error(err, "routing table not loaded", kv...)
		return
	}
	s.pub.publish(routes, s.OnChange, s.Log)
}

func (l *kubeLoader) reportMissing(cmOK, secretOK bool) {
	var absent []string
	if !cmOK {
		absent = append(absent, "ConfigMap "+l.source.Namespace+"/"+l.source.ConfigMapName)
	}
	if !secretOK {
		absent = append(absent, "Secret "+l.source.Namespace+"/"+l.source.SecretName)
	}
	msg := fmt.Sprint(absent)
	if msg == l.missing {
		return
	}
	l.missing = msg
	if current := l.source.Current(); current != nil {
		l.source.Log.Info("routing object deleted; keeping the last loaded routes", "missing", absent, "keptRevision", current.Revision)
		return
	}
	l.source.Log.Info("waiting for the routing objects; not ready until both exist", "missing", absent)
}

func getTyped[T any](store cache.Store, namespace, name string) (T, bool) {
	var zero T
	obj, exists, err := store.GetByKey(namespace + "/" + name)
	if err != nil || !exists {
		return zero, false
	}
	typed, ok := obj.(T)
	return typed, ok
}
