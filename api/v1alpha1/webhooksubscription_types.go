/*
Copyright 2026 Involveo.

Licensed under the Apache License, Version 2.0 (the "License");
you may not use this file except in compliance with the License.
You may obtain a copy of the License at

    http://www.apache.org/licenses/LICENSE-2.0

Unless required by applicable law or agreed to in writing, software
distributed under the License is distributed on an "AS IS" BASIS,
WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
See the License for the specific language governing permissions and
limitations under the License.
*/

package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// WebhookSubscriptionSpec declares which Involveo events are delivered where, and how.
// +kubebuilder:validation:XValidation:rule="!has(self.headers) || self.headers.all(h, self.headers.filter(o, o.name.lowerAscii() == h.name.lowerAscii()).size() == 1)",message="header names must be unique (compared case-insensitively)",fieldPath=".headers"
type WebhookSubscriptionSpec struct {
	// endpoint is the HTTP endpoint that receives the events.
	// +required
	Endpoint Endpoint `json:"endpoint"`

	// events lists the event types delivered to the endpoint. Each item is an
	// exact type ("task.published"), a trailing wildcard that matches every type
	// with that prefix ("task.*"), or "*" for every event, including types
	// Involveo adds later.
	// +required
	// +listType=set
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=50
	Events []EventPattern `json:"events"`

	// apiKeySecretRef selects the key of a Secret in this namespace whose value
	// is sent in the X-Api-Key header of every delivery. Rotating the Secret
	// rotates the key without editing the subscription.
	// +required
	APIKeySecretRef SecretKeyReference `json:"apiKeySecretRef"`

	// headers are extra HTTP headers sent with every delivery, either literal
	// values or values read from a Secret in this namespace. Content-Type,
	// Content-Length, Host, X-Api-Key, X-Involveo-Event, X-Involveo-Delivery
	// and the hop-by-hop headers (Connection, Keep-Alive, Proxy-Connection, TE,
	// Trailer, Transfer-Encoding, Upgrade) are set by the relay and cannot be
	// overridden.
	// +optional
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MaxItems=50
	Headers []Header `json:"headers,omitempty"`

	// retry controls redelivery after a failed attempt. The defaults are the
	// Involveo contract: 3 retries, 3 minutes apart.
	// +optional
	// +kubebuilder:default={}
	Retry RetryPolicy `json:"retry,omitzero"`

	// filter is a CEL expression over the event (event, timestamp, data) that
	// must be true for the event to be delivered, for example
	// `data.task.tags.exists(t, t == "admin")` or
	// `event == "task.status_changed" && data.status_after == "Done"`.
	// It is checked after the event type matches. An expression that does not
	// compile makes the subscription Ready=False (InvalidFilter); one that
	// fails at run time (a missing field) does not deliver that event.
	// +optional
	// +kubebuilder:validation:MaxLength=4096
	Filter string `json:"filter,omitempty"`

	// signing signs every delivery with Standard Webhooks headers
	// (webhook-id, webhook-timestamp, webhook-signature), so the receiver can
	// verify the sender and reject replays.
	// +optional
	Signing *Signing `json:"signing,omitempty"`

	// delivery limits how hard the relay drives the endpoint.
	// +optional
	// +kubebuilder:default={}
	Delivery DeliveryPolicy `json:"delivery,omitzero"`

	// suspend stops deliveries to this endpoint while true. Events that arrive
	// while suspended are not delivered to it later.
	// +optional
	// +kubebuilder:default=false
	Suspend bool `json:"suspend,omitempty"`
}

// Endpoint is where and how the relay posts events.
type Endpoint struct {
	// url is the absolute http or https URL events are POSTed to.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=2048
	// +kubebuilder:validation:XValidation:rule="isURL(self) && url(self).getScheme() in ['http', 'https'] && url(self).getHostname() != ''",message="must be an absolute http or https URL with a host, e.g. https://crm.example.com/hooks/involveo"
	URL string `json:"url"`

	// timeout bounds one delivery attempt, from connecting to reading the
	// response status. An attempt that runs longer counts as failed.
	// +optional
	// +kubebuilder:default="30s"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:XValidation:rule="self.matches('^([0-9]+([.][0-9]+)?(ns|us|ms|s|m|h))+$') && duration(self) >= duration('1s') && duration(self) <= duration('5m')",message="must be a duration between 1s and 5m, e.g. 30s"
	Timeout *metav1.Duration `json:"timeout,omitempty"`
}

// EventPattern is an exact event type ("task.created"), a trailing wildcard
// ("task.*") or "*".
// +kubebuilder:validation:MinLength=1
// +kubebuilder:validation:MaxLength=128
// +kubebuilder:validation:XValidation:rule="self == '*' || self.matches('^[a-z0-9_]+([.][a-z0-9_]+)*([.][*])?$')",message="must be an exact lowercase event type (task.created), a trailing wildcard (task.*) or *"
type EventPattern string

// SecretKeyReference selects one key of a Secret in the subscription's namespace.
type SecretKeyReference struct {
	// name is the name of the Secret.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:XValidation:rule="!format.dns1123Subdomain().validate(self).hasValue()",message="must be a valid Secret name (lowercase RFC 1123 subdomain)"
	Name string `json:"name"`

	// key is the key within the Secret's data.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:XValidation:rule="self.matches('^[-._a-zA-Z0-9]+$')",message="must be a valid Secret key (letters, digits, '-', '_' and '.')"
	Key string `json:"key"`
}

// Header is one extra HTTP header sent with every delivery.
// +kubebuilder:validation:XValidation:rule="has(self.value) != has(self.valueFrom)",message="exactly one of value or valueFrom must be set"
// +kubebuilder:validation:XValidation:rule="!(self.name.lowerAscii() in ['content-type', 'content-length', 'host', 'x-api-key', 'x-involveo-event', 'x-involveo-delivery', 'connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade'])",messageExpression="'header ' + self.name + ' is reserved: the relay sets it'",fieldPath=".name"
type Header struct {
	// name is the header name, a valid HTTP token such as X-Tenant.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=256
	// +kubebuilder:validation:XValidation:rule="self.matches('^[-A-Za-z0-9!#$%&*+.^_|~]+$')",message="must be a valid HTTP header name (letters, digits and !#$%&*+-.^_|~)"
	Name string `json:"name"`

	// value is the literal header value. Use valueFrom for anything secret.
	// +optional
	// +kubebuilder:validation:MaxLength=4096
	Value string `json:"value,omitempty"`

	// valueFrom reads the header value from a Secret in this namespace.
	// +optional
	ValueFrom *HeaderValueSource `json:"valueFrom,omitempty"`
}

// HeaderValueSource is where a header's value comes from.
type HeaderValueSource struct {
	// secretKeyRef selects the key of a Secret in this namespace.
	// +required
	SecretKeyRef SecretKeyReference `json:"secretKeyRef"`
}

// RetryPolicy controls redelivery after a failed attempt.
type RetryPolicy struct {
	// maxRetries is how many times a failed delivery is retried after the first
	// attempt. When all fail the event is dead-lettered for this endpoint.
	// +optional
	// +kubebuilder:default=3
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=10
	MaxRetries *int32 `json:"maxRetries,omitempty"`

	// interval is the wait between a failed attempt and the next retry.
	// +optional
	// +kubebuilder:default="3m"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:XValidation:rule="self.matches('^([0-9]+([.][0-9]+)?(ns|us|ms|s|m|h))+$') && duration(self) >= duration('1s') && duration(self) <= duration('24h')",message="must be a duration between 1s and 24h, e.g. 3m"
	Interval *metav1.Duration `json:"interval,omitempty"`
}

// Signing selects the secrets deliveries are signed with.
type Signing struct {
	// secretRef selects the signing secret: "whsec_" followed by base64, or
	// at least 24 raw bytes.
	// +required
	SecretRef SecretKeyReference `json:"secretRef"`

	// previousSecretRef selects the secret being rotated out. While set,
	// every delivery carries a signature with each secret, so receivers can
	// switch keys without rejecting deliveries; remove it when they have.
	// +optional
	PreviousSecretRef *SecretKeyReference `json:"previousSecretRef,omitempty"`
}

// DeliveryPolicy limits concurrency and rate towards the endpoint.
type DeliveryPolicy struct {
	// maxInFlight caps the attempts running at once, per relay replica.
	// +optional
	// +kubebuilder:default=16
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=256
	MaxInFlight *int32 `json:"maxInFlight,omitempty"`

	// ratePerSecond caps attempts per second (a token bucket with a burst of
	// the same size). Each relay replica enforces ratePerSecond divided by the
	// number of replicas, so the total holds while the work is spread evenly.
	// Unlimited when unset.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=10000
	RatePerSecond *int32 `json:"ratePerSecond,omitempty"`
}

// WebhookSubscriptionStatus is the observed state of a WebhookSubscription,
// written by the manager only.
type WebhookSubscriptionStatus struct {
	// observedGeneration is the generation of the spec the conditions describe.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// conditions are Ready (the relay has loaded this generation), DeliveryHealthy
	// (recent deliveries succeed), and Reconciling/Stalled while they apply.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// delivery summarises the relay's delivery figures for this subscription.
	// +optional
	Delivery *DeliveryStatus `json:"delivery,omitempty"`

	// replay reports the last redelivery of dead letters requested with the
	// webhooks.involveo.io/redeliver annotation.
	// +optional
	Replay *ReplayStatus `json:"replay,omitempty"`
}

// ReplayStatus is the outcome of a redelivery request.
type ReplayStatus struct {
	// requested is the value of the redeliver annotation this replay served;
	// the same value never replays twice, so re-applying a manifest is safe.
	// +optional
	Requested string `json:"requested,omitempty"`

	// since is the redeliver-since annotation's time, when one was given.
	// +optional
	Since *metav1.Time `json:"since,omitempty"`

	// replayed is the number of dead letters re-enqueued with a fresh retry
	// budget.
	// +optional
	Replayed int64 `json:"replayed,omitempty"`

	// startedTime is when the manager first asked the relays. A retried
	// request replays only dead letters from before it, so nothing that died
	// again since is replayed twice.
	// +optional
	StartedTime *metav1.Time `json:"startedTime,omitempty"`

	// completedTime is when the relays re-enqueued them; unset while the
	// request is still being retried.
	// +optional
	CompletedTime *metav1.Time `json:"completedTime,omitempty"`
}

// DeliveryStatus summarises deliveries to the endpoint, summed over relay
// replicas. Counters never go backwards across relay restarts.
type DeliveryStatus struct {
	// lastAttemptTime is when the latest delivery attempt finished.
	// +optional
	LastAttemptTime *metav1.Time `json:"lastAttemptTime,omitempty"`

	// lastSuccessTime is when the endpoint last answered 200 OK.
	// +optional
	LastSuccessTime *metav1.Time `json:"lastSuccessTime,omitempty"`

	// lastFailureTime is when the latest attempt failed.
	// +optional
	LastFailureTime *metav1.Time `json:"lastFailureTime,omitempty"`

	// lastFailure describes the latest failed attempt.
	// +optional
	LastFailure *DeliveryFailure `json:"lastFailure,omitempty"`

	// consecutiveFailures counts failed attempts since the last success.
	// +optional
	ConsecutiveFailures int64 `json:"consecutiveFailures,omitempty"`

	// pendingRetries is the number of deliveries waiting for their next retry.
	// +optional
	PendingRetries int64 `json:"pendingRetries,omitempty"`

	// succeeded counts deliveries the endpoint accepted with 200 OK.
	// +optional
	Succeeded int64 `json:"succeeded,omitempty"`

	// failed counts failed attempts, retries included.
	// +optional
	Failed int64 `json:"failed,omitempty"`

	// deadLettered counts deliveries given up after the last retry failed.
	// +optional
	DeadLettered int64 `json:"deadLettered,omitempty"`
}

// DeliveryFailure describes one failed delivery attempt.
type DeliveryFailure struct {
	// reason is why the attempt failed: the HTTP status line, a timeout or a
	// transport error. It never contains header values.
	// +optional
	Reason string `json:"reason,omitempty"`

	// statusCode is the HTTP status the endpoint answered, 0 when there was no
	// response.
	// +optional
	StatusCode int32 `json:"statusCode,omitempty"`

	// event is the type of the event whose delivery failed.
	// +optional
	Event string `json:"event,omitempty"`
}

// WebhookSubscription delivers Involveo events to one HTTP endpoint.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=whs,categories=involveo
// +kubebuilder:printcolumn:name="URL",type=string,JSONPath=`.spec.endpoint.url`
// +kubebuilder:printcolumn:name="Events",type=string,JSONPath=`.spec.events`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Healthy",type=string,JSONPath=`.status.conditions[?(@.type=="DeliveryHealthy")].status`
// +kubebuilder:printcolumn:name="Last success",type=date,JSONPath=`.status.delivery.lastSuccessTime`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type WebhookSubscription struct {
	metav1.TypeMeta `json:",inline"`

	// metadata is the standard object metadata.
	// +optional
	metav1.ObjectMeta `json:"metadata,omitzero"`

	// spec declares the subscription.
	// +required
	Spec WebhookSubscriptionSpec `json:"spec"`

	// status is the observed state, written by the manager.
	// +optional
	Status WebhookSubscriptionStatus `json:"status,omitzero"`
}

// WebhookSubscriptionList is a list of WebhookSubscriptions.
// +kubebuilder:object:root=true
type WebhookSubscriptionList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitzero"`
	Items           []WebhookSubscription `json:"items"`
}

func init() {
	SchemeBuilder.Register(&WebhookSubscription{}, &WebhookSubscriptionList{})
}
