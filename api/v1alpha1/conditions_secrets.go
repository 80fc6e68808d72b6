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

// Reasons of the Ready condition added with the manager.
const (
	// ReasonInvalidSecretValue: a referenced Secret key holds a value that cannot be
	// sent as an HTTP header (empty, or a control character or line break such as a
	// trailing newline). It is left out of the table rather than make the relay refuse
	// the whole table.
	ReasonInvalidSecretValue = "InvalidSecretValue"
)
