package controller

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	appsv1ac "k8s.io/client-go/applyconfigurations/apps/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	networkingv1ac "k8s.io/client-go/applyconfigurations/networking/v1"
	policyv1ac "k8s.io/client-go/applyconfigurations/policy/v1"
	rbacv1ac "k8s.io/client-go/applyconfigurations/rbac/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/involveo/webhook-operator/internal/healthpoll"
	"github.com/involveo/webhook-operator/internal/relayobjects"
	"github.com/involveo/webhook-operator/internal/render"
	"github.com/involveo/webhook-operator/internal/routing"
)

// RevisionAnnotation on the routing ConfigMap names the revision of the table it holds,
// for people reading it with kubectl.
const RevisionAnnotation = "webhooks.involveo.io/revision"

var applyOptions = []client.ApplyOption{client.FieldOwner(relayobjects.ManagedBy), client.ForceOwnership}

// routingLabels mark the routing ConfigMap and the credentials Secret.
func routingLabels() map[string]string {
	l := relayobjects.Labels()
	l["app.kubernetes.io/component"] = "routing"
	return l
}

// applyRouting writes the credentials Secret and then the routing ConfigMap, each only
// when its content differs, and reports whether the table changed. In that order the
// relay never sees a table naming a key the Secret lacks. Keys the new table no longer
// names stay in the Secret until every relay has loaded the new table, so a relay that
// sees the Secret change before the ConfigMap does is not left with an old table it
// cannot load.
func (r *RelayReconciler) applyRouting(ctx context.Context, res *render.Result, view *healthpoll.View) (bool, error) {
	ns := r.config.Namespace
	key := types.NamespacedName{Namespace: ns, Name: routing.CredentialsSecretName}
	own, err := r.ownSecret.read(ctx, []types.NamespacedName{key})
	if err != nil {
		return false, fmt.Errorf("read credentials Secret: %w", err)
	}
	current, exists := own[key]
	creds := res.Credentials
	if !(view.Polled && view.RevisionLoaded(res.ConfigMap.Revision)) {
		creds = maps.Clone(creds)
		for k, v := range current {
			if _, named := creds[k]; !named {
				creds[k] = v
			}
		}
	}
	if !exists || !maps.EqualFunc(current, creds, bytes.Equal) {
		secret := corev1ac.Secret(routing.CredentialsSecretName, ns).
			WithLabels(routingLabels()).
			WithType(corev1.SecretTypeOpaque).
			WithData(creds)
		if err := r.client.Apply(ctx, secret, applyOptions...); err != nil {
			return false, fmt.Errorf("apply credentials Secret %s: %w", key, err)
		}
		ctrl.LoggerFrom(ctx).Info("credentials Secret written", "secret", key.String(), "keys", len(creds))
	}

	cm := &corev1.ConfigMap{}
	err = r.client.Get(ctx, types.NamespacedName{Namespace: ns, Name: routing.ConfigMapName}, cm)
	if client.IgnoreNotFound(err) != nil {
		return false, fmt.Errorf("get routing ConfigMap: %w", err)
	}
	if err == nil && maps.Equal(cm.Data, res.ConfigMap.Data) && maps.EqualFunc(cm.BinaryData, res.ConfigMap.BinaryData, bytes.Equal) {
		return false, nil
	}
	apply := corev1ac.ConfigMap(routing.ConfigMapName, ns).
		WithLabels(routingLabels()).
		WithAnnotations(map[string]string{RevisionAnnotation: res.ConfigMap.Revision})
	if res.ConfigMap.Data != nil {
		apply.WithData(res.ConfigMap.Data)
	}
	if res.ConfigMap.BinaryData != nil {
		apply.WithBinaryData(res.ConfigMap.BinaryData)
	}
	if err := r.client.Apply(ctx, apply, applyOptions...); err != nil {
		return false, fmt.Errorf("apply routing ConfigMap %s/%s: %w", ns, routing.ConfigMapName, err)
	}
	ctrl.LoggerFrom(ctx).Info("routing table written", "revision", res.ConfigMap.Revision,
		"routed", len(res.Table.Subscriptions), "leftOut", len(res.Verdicts)-len(res.Table.Subscriptions))
	return true, nil
}

// relayObject is one of the relay's objects with what it takes to detect drift: the
// fields the manager owns are extracted from the cached object and compared with the
// desired configuration, so an unchanged object costs no API call, and one edited by
// someone else is put back.
type relayObject struct {
	kind    string
	key     types.NamespacedName
	desired runtime.ApplyConfiguration
	current client.Object
	owned   func(client.Object) (runtime.ApplyConfiguration, error)
}

func newRelayObject[O client.Object, A runtime.ApplyConfiguration](kind string, key types.NamespacedName, desired A, current O,
	extract func(O, string) (A, error)) relayObject {
	return relayObject{kind: kind, key: key, desired: desired, current: current,
		owned: func(obj client.Object) (runtime.ApplyConfiguration, error) {
			return extract(obj.(O), relayobjects.ManagedBy)
		}}
}

// drifted reports whether the object is missing or the fields the manager owns differ
// from the desired ones (someone else changed them, or the manager's flags changed).
func (o relayObject) drifted(ctx context.Context, c client.Reader) (bool, error) {
	err := c.Get(ctx, o.key, o.current)
	if apierrors.IsNotFound(err) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("get %s %s: %w", o.kind, o.key, err)
	}
	owned, err := o.owned(o.current)
	if err != nil {
		return true, nil
	}
	return !equality.Semantic.DeepEqual(owned, o.desired), nil
}

// relayObjects lists the objects to apply, in an order where each one's dependencies
// come first: the ServiceAccount and its permissions before the pods that use them.
func relayObjects(objs relayobjects.Objects, namespace string) []relayObject {
	key := types.NamespacedName{Namespace: namespace, Name: relayobjects.Name}
	list := []relayObject{
		newRelayObject("ServiceAccount", key, objs.ServiceAccount, &corev1.ServiceAccount{}, corev1ac.ExtractServiceAccount),
		newRelayObject("Role", key, objs.Role, &rbacv1.Role{}, rbacv1ac.ExtractRole),
		newRelayObject("RoleBinding", key, objs.RoleBinding, &rbacv1.RoleBinding{}, rbacv1ac.ExtractRoleBinding),
	}
	if objs.PersistentVolumeClaim != nil {
		claim := types.NamespacedName{Namespace: namespace, Name: relayobjects.DataClaimName}
		list = append(list, newRelayObject("PersistentVolumeClaim", claim, objs.PersistentVolumeClaim,
			&corev1.PersistentVolumeClaim{}, corev1ac.ExtractPersistentVolumeClaim))
	}
	list = append(list,
		newRelayObject("Deployment", key, objs.Deployment, &appsv1.Deployment{}, appsv1ac.ExtractDeployment),
		newRelayObject("Service", key, objs.Service, &corev1.Service{}, corev1ac.ExtractService),
		newRelayObject("NetworkPolicy", key, objs.NetworkPolicy, &networkingv1.NetworkPolicy{}, networkingv1ac.ExtractNetworkPolicy),
	)
	if objs.PodDisruptionBudget != nil {
		list = append(list, newRelayObject("PodDisruptionBudget", key, objs.PodDisruptionBudget,
			&policyv1.PodDisruptionBudget{}, policyv1ac.ExtractPodDisruptionBudget))
	}
	return list
}

// applyRelayObjects applies every relay object that drifted, and deletes the
// PodDisruptionBudget when the relay runs a single replica. The data claim is never
// deleted: it holds undelivered events.
func (r *RelayReconciler) applyRelayObjects(ctx context.Context) error {
	objs := relayobjects.Build(r.config.Relay)
	var errs []error
	for _, o := range relayObjects(objs, r.config.Namespace) {
		if err := r.applyIfDrifted(ctx, o); err != nil {
			errs = append(errs, err)
		}
	}
	if objs.PodDisruptionBudget == nil {
		pdb := &policyv1.PodDisruptionBudget{}
		err := r.client.Get(ctx, types.NamespacedName{Namespace: r.config.Namespace, Name: relayobjects.Name}, pdb)
		if err == nil {
			err = r.client.Delete(ctx, pdb)
		}
		if client.IgnoreNotFound(err) != nil {
			errs = append(errs, fmt.Errorf("delete PodDisruptionBudget of the single relay replica: %w", err))
		}
	}
	return errors.Join(errs...)
}

func (r *RelayReconciler) applyIfDrifted(ctx context.Context, o relayObject) error {
	drifted, err := o.drifted(ctx, r.client)
	if err != nil || !drifted {
		return err
	}
	if err := r.client.Apply(ctx, o.desired, applyOptions...); err != nil {
		return fmt.Errorf("apply %s %s: %w", o.kind, o.key, err)
	}
	ctrl.LoggerFrom(ctx).Info("relay object applied", "kind", o.kind, "name", o.key.String())
	return nil
}
