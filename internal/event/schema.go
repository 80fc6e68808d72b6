package event

import (
	"slices"
	"strconv"
	"strings"
)

// schemas holds the data schema of every event type Involveo documents. A new event type is one
// entry here. Types missing from the table are still accepted with any data object: Involveo
// adds events over time, partly on a client's request, and a relay that refused them would
// drop events a subscriber asked for.
var schemas = map[string]*schema{
	"task.created":   taskEvent(),
	"task.published": taskEvent(),
	"task.status_changed": taskEvent(
		field{name: "status_before", kind: kindString},
		field{name: "status_after", kind: kindString},
	),
	"task.deleted": taskEvent(),
}

// taskEvent is the data of every task.* event: the idea and its author, then the given fields.
func taskEvent(extra ...field) *schema {
	return &schema{fields: append([]field{
		{name: "task", kind: kindObject, object: taskSchema},
		{name: "user", kind: kindObject, object: userSchema},
	}, extra...)}
}

// The seed calls several fields "string | null" and describes them as "if given" without
// saying whether the key is then null or left out. Those fields are optional as well as
// nullable: refusing an event over the spelling of an absent value would lose the event.
var (
	taskSchema = &schema{fields: []field{
		{name: "title", kind: kindString},
		{name: "content", kind: kindString},
		{name: "status", kind: kindString},
		{name: "tags", kind: kindStrings},
		{name: "time_create", kind: kindTimestamp},
		{name: "email", kind: kindString, nullable: true, optional: true},
	}}

	userSchema = &schema{
		tag: "type",
		variants: map[string][]field{
			"internal": {
				{name: "email", kind: kindString},
				{name: "name", kind: kindString, nullable: true, optional: true},
				{name: "company", kind: kindString, nullable: true, optional: true},
				// The seed's field table for internal users leaves custom_fields out while its
				// example sends an empty object, so it is checked only when present.
				{name: "custom_fields", kind: kindObject, optional: true},
			},
			"sso": {
				// Every claim of the SSO token, whatever the client's IdP puts there.
				{name: "custom_fields", kind: kindObject},
			},
		},
	}
)

// kind is the JSON shape a field's value must have.
type kind uint8

const (
	kindString    kind = iota + 1
	kindTimestamp      // a string that ParseTimestamp accepts
	kindStrings        // an array whose items are all strings
	kindObject         // an object, checked against field.object when that is set
)

// field is one key of an object and the rule for its value.
type field struct {
	name     string
	kind     kind
	optional bool    // the key may be absent
	nullable bool    // the value may be JSON null
	object   *schema // for kindObject; nil accepts any object
}

// schema is the rule for an object. Keys it does not list are allowed: the payload is relayed
// as received, and the producer may add fields before this table learns about them.
type schema struct {
	fields []field
	// tag names a string field whose value selects more fields from variants, checked after
	// fields; empty when the object has one shape.
	tag      string
	variants map[string][]field
}

// validate reports the first field of obj, at JSON path path, that breaks s: fields in table
// order, then the tag, then the chosen variant's fields, so the same body always gets the same
// answer.
func (s *schema) validate(path string, obj map[string]any) *ValidationError {
	if err := validateFields(path, obj, s.fields); err != nil {
		return err
	}
	if s.tag == "" {
		return nil
	}
	at := path + "." + s.tag
	v, ok := obj[s.tag]
	if !ok {
		return &ValidationError{Field: at, Message: "is required"}
	}
	name, _ := v.(string)
	fields, ok := s.variants[name]
	if !ok {
		return &ValidationError{Field: at, Message: "must be one of " + s.tagValues()}
	}
	return validateFields(path, obj, fields)
}

// tagValues lists the accepted tag values, sorted so the message never changes between runs.
func (s *schema) tagValues() string {
	names := make([]string, 0, len(s.variants))
	for name := range s.variants {
		names = append(names, strconv.Quote(name))
	}
	slices.Sort(names)
	return strings.Join(names, ", ")
}

func validateFields(path string, obj map[string]any, fields []field) *ValidationError {
	for _, f := range fields {
		if err := f.validate(path, obj); err != nil {
			return err
		}
	}
	return nil
}

func (f field) validate(path string, obj map[string]any) *ValidationError {
	at := path + "." + f.name
	v, ok := obj[f.name]
	switch {
	case !ok && f.optional:
		return nil
	case !ok:
		return &ValidationError{Field: at, Message: "is required"}
	case v == nil && f.nullable:
		return nil
	}
	switch f.kind {
	case kindString:
		if _, ok := v.(string); ok {
			return nil
		}
	case kindTimestamp:
		if s, ok := v.(string); ok {
			if _, err := ParseTimestamp(s); err == nil {
				return nil
			}
		}
	case kindStrings:
		if items, ok := v.([]any); ok {
			for i, item := range items {
				if _, ok := item.(string); !ok {
					return &ValidationError{Field: at + "[" + strconv.Itoa(i) + "]", Message: "must be a string"}
				}
			}
			return nil
		}
	case kindObject:
		if m, ok := v.(map[string]any); ok {
			if f.object == nil {
				return nil
			}
			return f.object.validate(at, m)
		}
	}
	return &ValidationError{Field: at, Message: f.expected()}
}

// expected is the message for a value of the wrong shape.
func (f field) expected() string {
	var msg string
	switch f.kind {
	case kindString:
		msg = "must be a string"
	case kindTimestamp:
		msg = "must be an ISO-8601 timestamp"
	case kindStrings:
		msg = "must be an array of strings"
	case kindObject:
		msg = "must be an object"
	}
	if f.nullable {
		msg += " or null"
	}
	return msg
}
