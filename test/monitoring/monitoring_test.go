// Package monitoring checks the Grafana dashboard and the Prometheus alerts in
// config/ against the metrics the relay really registers, so renaming or
// dropping a metric in internal/relay fails here instead of leaving a blank
// panel or an alert that can never fire.
package monitoring

import (
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"text/template"
	"time"

	"sigs.k8s.io/yaml"
)

const (
	dashboardPath = "../../config/grafana/involveo-relay-dashboard.json"
	rulesPath     = "../../config/prometheus/involveo-relay-rules.yaml"
	relayDir      = "../../internal/relay"
	// datasourceRef is how every panel must name its data source, so the
	// dashboard works against whichever Prometheus the user picks.
	datasourceRef = "${datasource}"
)

// relayMetricRE finds the relay's series names inside PromQL.
var relayMetricRE = regexp.MustCompile(`involveo_relay_[a-z0-9_]+`)

// seriesSuffixes are the series a collector type exposes besides (or instead
// of) its own name.
var seriesSuffixes = map[string][]string{
	"HistogramOpts": {"_bucket", "_sum", "_count"},
	"SummaryOpts":   {"_sum", "_count"},
}

// registeredSeries reads the relay package's source and returns every series
// name its collectors expose: the Name (with Namespace and Subsystem, as
// prometheus.BuildFQName joins them) of each prometheus.*Opts literal, plus the
// suffixes of histograms and summaries.
func registeredSeries(t *testing.T) map[string]bool {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(relayDir, "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	series := map[string]bool{}
	fset := token.NewFileSet()
	for _, path := range files {
		if strings.HasSuffix(path, "_test.go") {
			continue
		}
		file, err := parser.ParseFile(fset, path, nil, 0)
		if err != nil {
			t.Fatalf("parse %s: %v", path, err)
		}
		ast.Inspect(file, func(n ast.Node) bool {
			// prometheus.NewDesc("name", …) of a custom collector.
			if call, ok := n.(*ast.CallExpr); ok {
				if sel, ok := call.Fun.(*ast.SelectorExpr); ok && sel.Sel.Name == "NewDesc" && len(call.Args) > 0 {
					if val, ok := call.Args[0].(*ast.BasicLit); ok && val.Kind == token.STRING {
						if name, err := strconv.Unquote(val.Value); err == nil {
							series[name] = true
						}
					}
				}
				return true
			}
			lit, ok := n.(*ast.CompositeLit)
			if !ok {
				return true
			}
			sel, ok := lit.Type.(*ast.SelectorExpr)
			if !ok || !strings.HasSuffix(sel.Sel.Name, "Opts") {
				return true
			}
			if pkg, ok := sel.X.(*ast.Ident); !ok || pkg.Name != "prometheus" {
				return true
			}
			parts := map[string]string{}
			for _, elt := range lit.Elts {
				kv, ok := elt.(*ast.KeyValueExpr)
				if !ok {
					continue
				}
				key, ok := kv.Key.(*ast.Ident)
				if !ok || (key.Name != "Namespace" && key.Name != "Subsystem" && key.Name != "Name") {
					continue
				}
				val, ok := kv.Value.(*ast.BasicLit)
				if !ok || val.Kind != token.STRING {
					t.Fatalf("%s: %s.%s is not a string literal; teach this test to read it", fset.Position(kv.Pos()), sel.Sel.Name, key.Name)
				}
				s, err := strconv.Unquote(val.Value)
				if err != nil {
					t.Fatal(err)
				}
				parts[key.Name] = s
			}
			if parts["Name"] == "" {
				return true
			}
			var fq []string
			for _, k := range []string{"Namespace", "Subsystem", "Name"} {
				if parts[k] != "" {
					fq = append(fq, parts[k])
				}
			}
			name := strings.Join(fq, "_")
			suffixes, ok := seriesSuffixes[sel.Sel.Name]
			if !ok {
				suffixes = []string{""}
			}
			for _, s := range suffixes {
				series[name+s] = true
			}
			return true
		})
	}
	if len(series) == 0 {
		t.Fatalf("found no metric in %s; has the relay's metrics code moved?", relayDir)
	}
	return series
}

// checkExpr reports every relay series expr uses that the relay does not
// register, and brackets that do not balance.
func checkExpr(t *testing.T, where, expr string, series map[string]bool, used map[string]bool) {
	t.Helper()
	if strings.TrimSpace(expr) == "" {
		t.Errorf("%s: empty expression", where)
		return
	}
	for _, pair := range []string{"()", "[]", "{}"} {
		if strings.Count(expr, pair[:1]) != strings.Count(expr, pair[1:]) {
			t.Errorf("%s: unbalanced %q in %q", where, pair, expr)
		}
	}
	for _, name := range relayMetricRE.FindAllString(expr, -1) {
		used[name] = true
		if !series[name] {
			t.Errorf("%s: uses %s, which internal/relay does not register", where, name)
		}
	}
}

// dashboard is the part of a Grafana dashboard model the test reads.
type dashboard struct {
	UID           string  `json:"uid"`
	SchemaVersion int     `json:"schemaVersion"`
	Panels        []panel `json:"panels"`
	Templating    struct {
		List []struct {
			Name       string          `json:"name"`
			Type       string          `json:"type"`
			Query      json.RawMessage `json:"query"`
			Definition string          `json:"definition"`
			Multi      bool            `json:"multi"`
			Datasource *datasource     `json:"datasource"`
		} `json:"list"`
	} `json:"templating"`
}

type panel struct {
	ID         int         `json:"id"`
	Type       string      `json:"type"`
	Title      string      `json:"title"`
	Datasource *datasource `json:"datasource"`
	Targets    []struct {
		RefID      string      `json:"refId"`
		Expr       string      `json:"expr"`
		Datasource *datasource `json:"datasource"`
	} `json:"targets"`
	// Panels are a collapsed row's children.
	Panels []panel `json:"panels"`
}

type datasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

func (d *datasource) isTemplated() bool {
	return d != nil && d.Type == "prometheus" && d.UID == datasourceRef
}

func TestDashboard_PanelsQueryRegisteredMetrics(t *testing.T) {
	raw, err := os.ReadFile(dashboardPath)
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatalf("parse %s: %v", dashboardPath, err)
	}
	if d.UID == "" {
		t.Error("dashboard has no uid; links and provisioning need a stable one")
	}
	if d.SchemaVersion < 39 {
		t.Errorf("schemaVersion is %d, want at least 39", d.SchemaVersion)
	}

	vars := map[string]int{}
	for i, v := range d.Templating.List {
		vars[v.Name] = i
	}
	if i, ok := vars["datasource"]; !ok {
		t.Error("no datasource variable")
	} else if v := d.Templating.List[i]; v.Type != "datasource" || string(v.Query) != `"prometheus"` {
		t.Errorf("datasource variable is type %q query %s, want a prometheus datasource variable", v.Type, v.Query)
	}
	if i, ok := vars["subscription"]; !ok {
		t.Error("no subscription variable")
	} else {
		v := d.Templating.List[i]
		const want = "label_values(involveo_relay_delivery_attempts_total, subscription)"
		if v.Type != "query" || !v.Multi || v.Definition != want || !strings.Contains(string(v.Query), want) {
			t.Errorf("subscription variable: type %q multi %v definition %q query %s; want a multi-value query variable over %s",
				v.Type, v.Multi, v.Definition, v.Query, want)
		}
		if !v.Datasource.isTemplated() {
			t.Errorf("subscription variable's datasource is %+v, want %s", v.Datasource, datasourceRef)
		}
	}

	series := registeredSeries(t)
	used := map[string]bool{}
	ids := map[int]string{}
	var walk func([]panel)
	walk = func(panels []panel) {
		for _, p := range panels {
			if prev, dup := ids[p.ID]; dup {
				t.Errorf("panels %q and %q share id %d", prev, p.Title, p.ID)
			}
			ids[p.ID] = p.Title
			if p.Type == "row" {
				walk(p.Panels)
				continue
			}
			if !p.Datasource.isTemplated() {
				t.Errorf("panel %q: datasource is %+v, want prometheus %s", p.Title, p.Datasource, datasourceRef)
			}
			if len(p.Targets) == 0 {
				t.Errorf("panel %q has no target", p.Title)
			}
			for _, tg := range p.Targets {
				where := "panel " + strconv.Quote(p.Title) + " target " + tg.RefID
				if tg.Datasource != nil && !tg.Datasource.isTemplated() {
					t.Errorf("%s: datasource is %+v, want %s", where, tg.Datasource, datasourceRef)
				}
				checkExpr(t, where, tg.Expr, series, used)
			}
		}
	}
	walk(d.Panels)
	if len(ids) == 0 {
		t.Fatal("dashboard has no panels")
	}
	for _, name := range slices.Sorted(maps.Keys(series)) {
		if !used[name] && !strings.HasSuffix(name, "_sum") && !strings.HasSuffix(name, "_count") {
			t.Logf("note: the dashboard does not show %s", name)
		}
	}
}

// rules is the part of a monitoring.coreos.com/v1 PrometheusRule the test reads.
type rules struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name string `json:"name"`
	} `json:"metadata"`
	Spec struct {
		Groups []struct {
			Name  string `json:"name"`
			Rules []struct {
				Alert       string            `json:"alert"`
				Record      string            `json:"record"`
				Expr        string            `json:"expr"`
				For         string            `json:"for"`
				Labels      map[string]string `json:"labels"`
				Annotations map[string]string `json:"annotations"`
			} `json:"rules"`
		} `json:"groups"`
	} `json:"spec"`
}

// alertTemplatePrelude defines what Prometheus defines before expanding an
// alert's annotations, so a typo such as {{ $label.x }} fails to parse here.
const alertTemplatePrelude = `{{$labels := .Labels}}{{$externalLabels := .ExternalLabels}}{{$externalURL := .ExternalURL}}{{$value := .Value}}`

// alertTemplateFuncs names the functions Prometheus adds to alert templates;
// parsing only needs the names, so one stub stands for all of them.
var alertTemplateFuncs = func() template.FuncMap {
	stub := func(...any) string { return "" }
	fm := template.FuncMap{}
	for _, name := range []string{
		"args", "externalURL", "first", "graphLink", "humanize", "humanize1024", "humanizeDuration",
		"humanizePercentage", "humanizeTimestamp", "label", "match", "parseDuration", "pathPrefix",
		"query", "reReplaceAll", "safeHtml", "sortByLabel", "stripDomain", "stripPort", "tableLink",
		"title", "tmpl", "toLower", "toTime", "toUpper", "value",
	} {
		fm[name] = stub
	}
	return fm
}()

func TestAlerts_AreCompleteAndUseRegisteredMetrics(t *testing.T) {
	raw, err := os.ReadFile(rulesPath)
	if err != nil {
		t.Fatal(err)
	}
	var r rules
	if err := yaml.Unmarshal(raw, &r); err != nil {
		t.Fatalf("parse %s: %v", rulesPath, err)
	}
	if r.APIVersion != "monitoring.coreos.com/v1" || r.Kind != "PrometheusRule" {
		t.Errorf("%s is %s %s, want monitoring.coreos.com/v1 PrometheusRule", rulesPath, r.APIVersion, r.Kind)
	}
	if r.Metadata.Name == "" {
		t.Error("PrometheusRule has no metadata.name")
	}

	series := registeredSeries(t)
	used := map[string]bool{}
	alerts := map[string]string{}
	for _, g := range r.Spec.Groups {
		if g.Name == "" {
			t.Error("a rule group has no name")
		}
		for _, rule := range g.Rules {
			if rule.Alert == "" {
				checkExpr(t, "record "+rule.Record, rule.Expr, series, used)
				continue
			}
			where := "alert " + rule.Alert
			if _, dup := alerts[rule.Alert]; dup {
				t.Errorf("%s is defined twice", where)
			}
			alerts[rule.Alert] = rule.For
			checkExpr(t, where, rule.Expr, series, used)
			if sev := rule.Labels["severity"]; !slices.Contains([]string{"critical", "warning", "info"}, sev) {
				t.Errorf("%s: severity label is %q, want critical, warning or info", where, sev)
			}
			for _, key := range []string{"summary", "description"} {
				text := strings.TrimSpace(rule.Annotations[key])
				if text == "" {
					t.Errorf("%s: no %s annotation", where, key)
					continue
				}
				if _, err := template.New(key).Funcs(alertTemplateFuncs).Parse(alertTemplatePrelude + text); err != nil {
					t.Errorf("%s: %s annotation does not parse as an alert template: %v", where, key, err)
				}
			}
			if rule.For != "" {
				if _, err := time.ParseDuration(rule.For); err != nil {
					t.Errorf("%s: for %q: %v", where, rule.For, err)
				}
			}
		}
	}

	// The alerts issue 8 asks for; removing one should be a decision, not an accident.
	for _, tc := range []struct {
		alert   string
		wantFor string
	}{
		{alert: "InvolveoRelayDeadLettersRising"},
		{alert: "InvolveoRelaySubscriptionFailing", wantFor: "15m"},
		{alert: "InvolveoRelayPendingRetriesHigh"},
		{alert: "InvolveoRelayIngestUnavailable"},
		{alert: "InvolveoRelayDown"},
		{alert: "InvolveoRelayAbsent"},
	} {
		got, ok := alerts[tc.alert]
		if !ok {
			t.Errorf("alert %s is missing", tc.alert)
			continue
		}
		if tc.wantFor != "" && got != tc.wantFor {
			t.Errorf("alert %s: for is %q, want %q", tc.alert, got, tc.wantFor)
		}
	}
}

// TestRegisteredSeries_ReadsTheRelaySource guards the source reader itself: if
// it found nothing, or the wrong things, the checks above would mean nothing.
func TestRegisteredSeries_ReadsTheRelaySource(t *testing.T) {
	series := registeredSeries(t)
	var buckets int
	for name := range series {
		if !strings.HasPrefix(name, "involveo_relay_") {
			t.Errorf("read %s, which is not a relay series", name)
		}
		if strings.HasSuffix(name, "_bucket") {
			buckets++
			if bare := strings.TrimSuffix(name, "_bucket"); series[bare] {
				t.Errorf("listed histogram %s by its bare name, which is not a series", bare)
			}
		}
	}
	if len(series) < 5 || buckets == 0 {
		t.Errorf("read %v from %s; expected the relay's counters, gauges and its latency histogram",
			slices.Sorted(maps.Keys(series)), relayDir)
	}
}
