package controller

import (
	"context"
	"fmt"

	"golang.org/x/sync/errgroup"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/involveo/webhook-operator/internal/render"
)

// secretReadConcurrency bounds the Secrets read from the API server at once: enough to
// read thousands at start-up in seconds, few enough not to crowd the API server.
const secretReadConcurrency = 16

// secretReader reads the data of the Secrets the subscriptions reference without
// caching every Secret of the cluster: the metadata cache says whether a Secret exists
// and which resourceVersion it has, and only a Secret whose resourceVersion changed is
// read again, uncached, from the API server.
//
// It is not safe for concurrent use: the relay reconcile, which runs one at a time, is
// its only caller.
type secretReader struct {
	metadata client.Reader // the manager's cache, holding Secret metadata only
	api      client.Reader // uncached
	data     map[types.NamespacedName]secretData
}

type secretData struct {
	resourceVersion string
	data            map[string][]byte
}

func newSecretReader(metadata, api client.Reader) *secretReader {
	return &secretReader{metadata: metadata, api: api, data: map[types.NamespacedName]secretData{}}
}

// read returns the data of the named Secrets that exist. Secrets no longer asked for are
// forgotten, so the reader holds only what the routing table needs.
func (s *secretReader) read(ctx context.Context, names []types.NamespacedName) (render.Secrets, error) {
	out := make(render.Secrets, len(names))
	kept := make(map[types.NamespacedName]secretData, len(names))
	var changed []types.NamespacedName
	for _, name := range names {
		meta := secretMetadata()
		err := s.metadata.Get(ctx, name, meta)
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("get metadata of Secret %s: %w", name, err)
		}
		if d, ok := s.data[name]; ok && d.resourceVersion == meta.ResourceVersion {
			out[name], kept[name] = d.data, d
			continue
		}
		changed = append(changed, name)
	}
	fetched, err := s.fetch(ctx, changed)
	if err != nil {
		return nil, err
	}
	for name, d := range fetched {
		out[name], kept[name] = d.data, d
	}
	s.data = kept
	return out, nil
}

// fetch reads Secrets from the API server; one deleted meanwhile is left out.
func (s *secretReader) fetch(ctx context.Context, names []types.NamespacedName) (map[types.NamespacedName]secretData, error) {
	results := make([]*corev1.Secret, len(names))
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(secretReadConcurrency)
	for i, name := range names {
		g.Go(func() error {
			secret := &corev1.Secret{}
			if err := s.api.Get(ctx, name, secret); err != nil {
				if apierrors.IsNotFound(err) {
					return nil
				}
				return fmt.Errorf("read Secret %s: %w", name, err)
			}
			results[i] = secret
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	out := make(map[types.NamespacedName]secretData, len(names))
	for i, secret := range results {
		if secret != nil {
			out[names[i]] = secretData{resourceVersion: secret.ResourceVersion, data: secret.Data}
		}
	}
	return out, nil
}

func secretMetadata() *metav1.PartialObjectMetadata {
	m := &metav1.PartialObjectMetadata{}
	m.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("Secret"))
	return m
}
