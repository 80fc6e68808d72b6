package routing

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

const testNamespace = "involveo-webhooks"

// fakeCluster is a fake clientset that reports each watch it opens, so tests change
// objects only once the source is watching (the fake tracker has no resource versions to
// replay what happened between list and watch).
type fakeCluster struct {
	*fake.Clientset
	watches chan k8stesting.WatchActionImpl
}

func newFakeCluster() *fakeCluster {
	c := &fakeCluster{Clientset: fake.NewClientset(), watches: make(chan k8stesting.WatchActionImpl, 10)}
	c.PrependWatchReactor("*", func(action k8stesting.Action) (bool, watch.Interface, error) {
		wa := action.(k8stesting.WatchActionImpl)
		w, err := c.Tracker().Watch(wa.GetResource(), wa.GetNamespace(), wa.ListOptions)
		c.watches <- wa
		return true, w, err
	})
	return c
}

// awaitWatches waits until the ConfigMap and the Secret are both watched, and checks that
// every list and watch is restricted to its one object by name: that is what lets the
// relay's Role grant get, list and watch with resourceNames only.
func (c *fakeCluster) awaitWatches(t *testing.T) {
	t.Helper()
	want := map[string]string{"configmaps": "metadata.name=" + ConfigMapName, "secrets": "metadata.name=" + CredentialsSecretName}
	for range 2 {
		select {
		case wa := <-c.watches:
			resource := wa.GetResource().Resource
			if wa.GetNamespace() != testNamespace || wa.ListOptions.FieldSelector != want[resource] {
				t.Fatalf("watch on %s in %q with field selector %q, want %q in %q",
					resource, wa.GetNamespace(), wa.ListOptions.FieldSelector, want[resource], testNamespace)
			}
		case <-time.After(eventually):
			t.Fatal("the source did not watch both objects")
		}
	}
	for _, action := range c.Actions() {
		if list, ok := action.(k8stesting.ListActionImpl); ok {
			if got, resource := list.ListOptions.FieldSelector, list.GetResource().Resource; got != want[resource] {
				t.Errorf("list on %s with field selector %q, want %q", resource, got, want[resource])
			}
		}
	}
}

// routesConfigMap renders the routing ConfigMap as the manager does, with its revision.
func routesConfigMap(t *testing.T, table *Table) (*corev1.ConfigMap, string) {
	t.Helper()
	content, err := EncodeConfigMap(table)
	if err != nil {
		t.Fatal(err)
	}
	return &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Namespace: testNamespace, Name: ConfigMapName},
		Data:       content.Data,
		BinaryData: content.BinaryData,
	}, content.Revision
}

func credentialsSecret(data map[string][]byte) *corev1.Secret {
	return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: testNamespace, Name: CredentialsSecretName}, Data: data}
}

func oneSubscription(url, keyName string) *Table {
	s := validSub("team-a/crm")
	s.URL = url
	s.APIKey = Secret{SecretKey: keyName}
	return &Table{Subscriptions: []Subscription{s}}
}

func TestKubernetesSource_FollowsTheConfigMapAndTheSecret(t *testing.T) {
	ctx := context.Background()
	cluster := newFakeCluster()
	configMaps, secrets := cluster.CoreV1().ConfigMaps(testNamespace), cluster.CoreV1().Secrets(testNamespace)
	log, lines := captureLog()
	changes := make(chan *Routes, 10)
	s := &KubernetesSource{
		Client: cluster, Namespace: testNamespace, ConfigMapName: ConfigMapName, SecretName: CredentialsSecretName,
		Log: log, OnChange: func(r *Routes) { changes <- r },
	}
	start(t, s.Run)
	cluster.awaitWatches(t)
	waitLog(t, lines, `"missing"=["ConfigMap involveo-webhooks/webhook-relay-routes" "Secret`)

	t.Log("with only the ConfigMap, nothing is loaded")
	v1, v1Revision := routesConfigMap(t, oneSubscription("https://crm.example.com/v1", "crm-key"))
	if _, err := configMaps.Create(ctx, v1, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitLog(t, lines, `"missing"=["Secret involveo-webhooks/webhook-relay-credentials"]`)
	noPendingRoutes(t, changes)
	if s.Loaded() {
		t.Fatal("loaded without the Secret")
	}

	t.Log("once the Secret exists, the table loads with the manager's revision")
	if _, err := secrets.Create(ctx, credentialsSecret(map[string][]byte{"crm-key": []byte("key-1")}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	first := nextRoutes(t, changes)
	if route, _ := first.Get("team-a/crm"); route.APIKey != "key-1" || first.Revision != v1Revision || !s.Loaded() {
		t.Fatalf("first load: revision %s, %v", first.Revision, route)
	}

	t.Log("a rotated key is loaded under the same revision")
	if _, err := secrets.Update(ctx, credentialsSecret(map[string][]byte{"crm-key": []byte("key-2")}), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	rotated := nextRoutes(t, changes)
	if route, _ := rotated.Get("team-a/crm"); route.APIKey != "key-2" || rotated.Revision != first.Revision {
		t.Fatalf("after rotation: revision %s, %v", rotated.Revision, route)
	}

	t.Log("a ConfigMap naming a key the Secret lacks yet is refused, then loads when the Secret catches up")
	v2, _ := routesConfigMap(t, oneSubscription("https://crm.example.com/v2", "crm-key-v2"))
	if _, err := configMaps.Update(ctx, v2, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	mustContain(t, waitLog(t, lines, "routing table not loaded"), `credentials key \"crm-key-v2\" not found`, "keptRevision")
	noPendingRoutes(t, changes)
	if s.Current() != rotated {
		t.Fatal("a refused table replaced the loaded one")
	}
	if _, err := secrets.Update(ctx, credentialsSecret(map[string][]byte{"crm-key-v2": []byte("key-3")}), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if route, _ := nextRoutes(t, changes).Get("team-a/crm"); route.URL.Path != "/v2" || route.APIKey != "key-3" {
		t.Fatalf("after the Secret caught up: %v", route)
	}

	t.Log("a large table arrives gzip-compressed in binaryData")
	big := bigTable(2000)
	if _, err := secrets.Update(ctx, credentialsSecret(credentialsFor(big)), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	compressed, _ := routesConfigMap(t, big)
	if compressed.BinaryData[RoutesGzipKey] == nil {
		t.Fatal("the test table is too small to be compressed")
	}
	if _, err := configMaps.Update(ctx, compressed, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The Secret update alone only refuses the old table, whose key it dropped.
	loaded := nextRoutes(t, changes)
	if loaded.Len() != 2000 {
		t.Fatalf("loaded %d routes, want 2000", loaded.Len())
	}

	t.Log("deleting the ConfigMap keeps the last routes")
	if err := configMaps.Delete(ctx, ConfigMapName, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitLog(t, lines, "routing object deleted; keeping the last loaded routes")
	if !s.Loaded() || s.Current() != loaded {
		t.Fatal("deleting the ConfigMap dropped the routes")
	}
}

func TestKubernetesSource_LoadsObjectsThatAlreadyExist(t *testing.T) {
	cm, _ := routesConfigMap(t, oneSubscription("https://crm.example.com/", "crm-key"))
	other := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: testNamespace, Name: "unrelated"}, Data: map[string]string{RoutesKey: "not: a table"}}
	cluster := fake.NewClientset(cm, other, credentialsSecret(map[string][]byte{"crm-key": []byte("k")}))
	changes := make(chan *Routes, 10)
	s := &KubernetesSource{
		Client: cluster, Namespace: testNamespace, ConfigMapName: ConfigMapName, SecretName: CredentialsSecretName,
		OnChange: func(r *Routes) { changes <- r },
	}
	start(t, s.Run)
	if r := nextRoutes(t, changes); r.Len() != 1 {
		t.Fatalf("loaded %d routes", r.Len())
	}
}

func TestKubernetesSource_RefusesAnIncompleteConfiguration(t *testing.T) {
	s := &KubernetesSource{Client: fake.NewClientset(), Namespace: testNamespace, ConfigMapName: ConfigMapName}
	if err := s.Run(context.Background()); err == nil {
		t.Fatal("ran without a Secret name")
	}
}
