package routing

import (
	"bytes"
	"cmp"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"slices"

	yamlv2 "go.yaml.in/yaml/v2"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// Size limits of the rendered table.
const (
	// MaxConfigMapBytes is the API server's limit on a ConfigMap's data (1 MiB).
	MaxConfigMapBytes = 1 << 20
	// GzipThreshold is the plain size above which EncodeConfigMap compresses the table.
	// Below it the table stays readable with kubectl; above it half the ConfigMap limit
	// is gone, and compressing leaves room for tables about ten times larger.
	GzipThreshold = 512 << 10
	// MaxDecompressedBytes bounds what DecodeConfigMap inflates, so that a corrupt or
	// hostile object cannot exhaust the relay's memory. A 10,000-subscription table is
	// a few MiB.
	MaxDecompressedBytes = 64 << 20
)

// revisionLength is the number of hex characters of the content hash kept as the
// revision: 64 bits is plenty to tell tables apart and short enough to read in status.
const revisionLength = 16

// Parse reads a table strictly (an unknown or duplicate field is an error, so a typo does
// not silently drop a setting) and validates it.
func Parse(data []byte) (*Table, error) {
	var t Table
	if err := yaml.UnmarshalStrict(data, &t); err != nil {
		return nil, fmt.Errorf("parse routing table: %w", err)
	}
	if err := t.Validate(); err != nil {
		return nil, fmt.Errorf("invalid routing table: %w", err)
	}
	return &t, nil
}

// Render validates t and writes it as deterministic YAML: version first, then revision,
// then the subscriptions sorted by ID with fields in schema order. The revision is the
// first 16 hex characters of the SHA-256 of that YAML without the revision line, so
// equal tables get equal revisions whatever t.Revision held. t is not modified.
func Render(t *Table) (data []byte, revision string, err error) {
	if err := t.Validate(); err != nil {
		return nil, "", fmt.Errorf("render routing table: %w", err)
	}
	version, body, err := renderParts(t)
	if err != nil {
		return nil, "", fmt.Errorf("render routing table: %w", err)
	}
	revision = contentRevision(version, body)
	// The revision is quoted because a hex string can look like a number to YAML
	// ("1234e567…"), which would not parse back into a string.
	revisionLine := fmt.Sprintf("revision: %q\n", revision)
	data = make([]byte, 0, len(version)+len(revisionLine)+len(body))
	data = append(append(append(data, version...), revisionLine...), body...)
	return data, revision, nil
}

// RenderGzip is Render followed by gzip. The gzip header carries no name and no
// modification time, so equal tables give equal bytes.
func RenderGzip(t *Table) (data []byte, revision string, err error) {
	plain, revision, err := Render(t)
	if err != nil {
		return nil, "", err
	}
	data, err = gzipBytes(plain)
	if err != nil {
		return nil, "", fmt.Errorf("render routing table: %w", err)
	}
	return data, revision, nil
}

// ConfigMapContent is a rendered table laid out as the routing ConfigMap's content.
// Exactly one of Data[RoutesKey] and BinaryData[RoutesGzipKey] is set; the other map is
// nil. Assign both to the ConfigMap (replacing what was there) so that a table that
// changed size class does not leave the other key behind: DecodeConfigMap refuses an
// object with both.
type ConfigMapContent struct {
	Revision   string
	Data       map[string]string
	BinaryData map[string][]byte
}

// EncodeConfigMap renders t for the routing ConfigMap: plain under RoutesKey, or
// gzip-compressed under RoutesGzipKey when the plain table exceeds GzipThreshold. It
// fails when even the compressed table exceeds MaxConfigMapBytes.
func EncodeConfigMap(t *Table) (ConfigMapContent, error) {
	plain, revision, err := Render(t)
	if err != nil {
		return ConfigMapContent{}, err
	}
	if len(plain) <= GzipThreshold {
		return ConfigMapContent{Revision: revision, Data: map[string]string{RoutesKey: string(plain)}}, nil
	}
	compressed, err := gzipBytes(plain)
	if err != nil {
		return ConfigMapContent{}, fmt.Errorf("render routing table: %w", err)
	}
	if len(compressed) > MaxConfigMapBytes {
		return ConfigMapContent{}, fmt.Errorf("render routing table: %d subscriptions take %d bytes compressed, more than the %d a ConfigMap holds",
			len(t.Subscriptions), len(compressed), MaxConfigMapBytes)
	}
	return ConfigMapContent{Revision: revision, BinaryData: map[string][]byte{RoutesGzipKey: compressed}}, nil
}

// DecodeConfigMap parses the table held by the routing ConfigMap under RoutesKey or,
// compressed, under RoutesGzipKey.
func DecodeConfigMap(cm *corev1.ConfigMap) (*Table, error) {
	plain, hasPlain := cm.Data[RoutesKey]
	compressed, hasCompressed := cm.BinaryData[RoutesGzipKey]
	switch {
	case hasPlain && hasCompressed:
		return nil, fmt.Errorf("configmap %s/%s has both %s and %s; it must have exactly one", cm.Namespace, cm.Name, RoutesKey, RoutesGzipKey)
	case hasPlain:
		return Parse([]byte(plain))
	case hasCompressed:
		data, err := gunzip(compressed, MaxDecompressedBytes)
		if err != nil {
			return nil, fmt.Errorf("configmap %s/%s key %s: %w", cm.Namespace, cm.Name, RoutesGzipKey, err)
		}
		return Parse(data)
	default:
		return nil, fmt.Errorf("configmap %s/%s has neither %s nor %s", cm.Namespace, cm.Name, RoutesKey, RoutesGzipKey)
	}
}

// canonical returns a copy of t in the form Render writes: current version, no revision,
// subscriptions sorted by ID, an empty list rather than null.
func canonical(t *Table) *Table {
	subs := slices.Clone(t.Subscriptions)
	if subs == nil {
		subs = []Subscription{}
	}
	slices.SortFunc(subs, func(a, b Subscription) int { return cmp.Compare(a.ID, b.ID) })
	return &Table{Version: CurrentVersion, Subscriptions: subs}
}

// renderParts writes the version line and the rest of the canonical table separately,
// so that Render can put the revision between them without encoding the table twice
// (encoding is most of the cost: about half a second for 10,000 subscriptions).
func renderParts(t *Table) (version, body []byte, err error) {
	c := canonical(t)
	version = fmt.Appendf(nil, "version: %d\n", c.Version)
	type list struct {
		Subscriptions []Subscription `json:"subscriptions"`
	}
	if len(c.Subscriptions) == 0 {
		body, err = marshalOrdered(list{c.Subscriptions})
		return version, body, err
	}
	// One subscription at a time: encoding 10,000 at once holds the whole
	// document's intermediate form in memory (about 90 MB in the manager),
	// and the bytes come out the same.
	const header = "subscriptions:\n"
	var buf bytes.Buffer
	buf.WriteString(header)
	for i := range c.Subscriptions {
		b, err := marshalOrdered(list{c.Subscriptions[i : i+1]})
		if err != nil {
			return nil, nil, err
		}
		buf.Write(bytes.TrimPrefix(b, []byte(header)))
	}
	return version, buf.Bytes(), nil
}

// marshalOrdered writes YAML with fields in struct order. sigs.k8s.io/yaml would sort keys
// alphabetically (it goes through a Go map), putting apiKey before id; a MapSlice keeps the
// order in which encoding/json wrote them.
func marshalOrdered(v any) ([]byte, error) {
	j, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	var ordered yamlv2.MapSlice
	if err := yamlv2.Unmarshal(j, &ordered); err != nil {
		return nil, err
	}
	return yamlv2.Marshal(ordered)
}

func contentRevision(version, body []byte) string {
	h := sha256.New()
	h.Write(version)
	h.Write(body)
	return hex.EncodeToString(h.Sum(nil))[:revisionLength]
}

// tableRevision is the revision Render would give t; it names tables loaded without one.
func tableRevision(t *Table) (string, error) {
	version, body, err := renderParts(t)
	if err != nil {
		return "", err
	}
	return contentRevision(version, body), nil
}

func gzipBytes(plain []byte) ([]byte, error) {
	var buf bytes.Buffer
	// The zero gzip.Header (no name, mtime 0) keeps the output a function of the input.
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if err != nil {
		return nil, err
	}
	if _, err := zw.Write(plain); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func gunzip(compressed []byte, limit int64) ([]byte, error) {
	zr, err := gzip.NewReader(bytes.NewReader(compressed))
	if err != nil {
		return nil, err
	}
	data, err := io.ReadAll(io.LimitReader(zr, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("decompresses to more than %d bytes", limit)
	}
	if err := zr.Close(); err != nil {
		return nil, err
	}
	return data, nil
}
