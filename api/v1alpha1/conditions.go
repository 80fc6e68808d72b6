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

// Condition types of a WebhookSubscription.
const (
	// ConditionReady is True when the relay has loaded a routing revision that
	// contains the subscription's current generation.
	ConditionReady = "Ready"
	// ConditionDeliveryHealthy is True while recent deliveries succeed, False
	// while they fail, and Unknown before the first attempt.
	ConditionDeliveryHealthy = "DeliveryHealthy"
	// ConditionReconciling is True while the manager works towards Ready (kstatus).
	ConditionReconciling = "Reconciling"
	// ConditionStalled is True when the spec cannot be served without a user's
	// change (kstatus).
	ConditionStalled = "Stalled"
)

// Reasons of the Ready condition.
const (
	// ReasonRouteLoaded: the relay reports a revision containing this generation.
	ReasonRouteLoaded = "RouteLoaded"
	// ReasonSecretNotFound: a referenced Secret does not exist.
	ReasonSecretNotFound = "SecretNotFound"
	// ReasonSecretKeyNotFound: a referenced Secret lacks the referenced key.
	ReasonSecretKeyNotFound = "SecretKeyNotFound"
	// ReasonInvalidSpec: the spec passed the API server but cannot be routed.
	ReasonInvalidSpec = "InvalidSpec"
	// ReasonInvalidSecretValue: a referenced Secret key holds a value that cannot
	// be used: empty, a header value with a control character or line break (a
	// trailing newline, typically), or a signing key that is too short. Only this
	// subscription is left out; the relay never sees the value.
	ReasonInvalidSecretValue = "InvalidSecretValue"
	// ReasonInvalidFilter: spec.filter does not compile as a boolean CEL expression.
	ReasonInvalidFilter = "InvalidFilter"
	// ReasonSuspended: spec.suspend is true, so the subscription is not routed.
	ReasonSuspended = "Suspended"
	// ReasonRelayUnavailable: no relay answered the health poll.
	ReasonRelayUnavailable = "RelayUnavailable"
	// ReasonRoutePending: the route is rendered but the relay has not loaded it yet.
	ReasonRoutePending = "RoutePending"
)

// Reasons of the DeliveryHealthy condition and of Kubernetes Events.
const (
	// ReasonNoDeliveries: nothing has been attempted yet.
	ReasonNoDeliveries = "NoDeliveries"
	// ReasonDeliverySucceeded: the latest attempt got 200 OK.
	ReasonDeliverySucceeded = "DeliverySucceeded"
	// ReasonDeliveryFailing: the latest attempt failed.
	ReasonDeliveryFailing = "DeliveryFailing"
	// ReasonDeliveryRecovered: an attempt succeeded after failures (Event only).
	ReasonDeliveryRecovered = "DeliveryRecovered"
	// ReasonDeadLettered: a delivery exhausted its retries (Event only).
	ReasonDeadLettered = "DeadLettered"
	// ReasonEndpointPaused: the relay holds the endpoint's deliveries after a
	// long run of failures, probing it now and then.
	ReasonEndpointPaused = "EndpointPaused"
	// ReasonRedelivered: dead letters were re-enqueued on request (Event only).
	ReasonRedelivered = "Redelivered"
)

// Annotations users set on a WebhookSubscription.
const (
	// AnnotationRedeliver: any new value re-enqueues the subscription's dead
	// letters with a fresh retry budget and resumes a paused endpoint.
	AnnotationRedeliver = "webhooks.involveo.io/redeliver"
	// AnnotationRedeliverSince (RFC 3339) limits a redelivery to dead letters
	// from that time on.
	AnnotationRedeliverSince = "webhooks.involveo.io/redeliver-since"
)
