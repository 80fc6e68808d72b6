// Package filter compiles and evaluates the content filters of webhook subscriptions: CEL
// expressions over one event that decide whether it is delivered. The manager compiles a
// filter to report a bad one on the subscription; the relay compiles it again when it loads
// the routes and evaluates it for every event the subscription's event types match.
//
// An expression sees three variables:
//
//	event      string  the "event" field, e.g. "task.status_changed"
//	timestamp  string  the "timestamp" field exactly as sent
//	data       dyn     the "data" object as decoded JSON (see DecodeData)
//
// and must evaluate to a bool, e.g.
//
//	data.task.tags.exists(t, t == "admin")
//	event == "task.status_changed" && data.status_after == "Готово"
//
// Besides standard CEL it has the cel-go extensions Kubernetes validation rules enable, at pinned
// versions so that a cel-go upgrade cannot change which stored filters compile: strings
// (lowerAscii, split, …), lists, sets, two-variable comprehensions and cel.bind.
package filter

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/google/cel-go/cel"
	"github.com/google/cel-go/checker"
	"github.com/google/cel-go/common/types"
	"github.com/google/cel-go/ext"
)

const (
	// MaxExpressionLength bounds a filter, in characters. Real filters are a line or two; 4096
	// leaves room for a long list of literal values while keeping the subscription, the
	// routing table it is copied into and the compiled program small.
	MaxExpressionLength = 4096

	// CostLimit is the runtime cost budget of one evaluation, in CEL cost units (about one per
	// operation, one per ten characters a string function walks). The relay evaluates filters
	// on its dispatch path, so one expression doing a great deal of work on a large event
	// must not hold up the events behind it; an evaluation over budget stops with an error.
	// It is the budget Kubernetes gives one validation rule; the example filters cost under a
	// hundred units on the seed events.
	CostLimit = 1_000_000

	// EvalTimeout bounds the wall time of one evaluation, for the same reason as CostLimit,
	// which alone does not bound time: cel-go's cost tracker (v0.29) spends time quadratic
	// in the iterations of a comprehension, so a loop over an 80,000-item list in data takes
	// 15 s while still under budget. A filter over an event of a few kilobytes takes
	// microseconds; at 100 ms only loops over many thousands of items are cut short.
	EvalTimeout = 100 * time.Millisecond

	// EstimatedCostLimit bounds the static cost estimate Compile computes, so a filter whose
	// cost grows with the square of the event is refused at admission instead of failing on
	// large events. The estimate assumes every list, map and string in the event is
	// estimatedMaxSize long at once, which a few-kilobyte event cannot be: a real event costs
	// orders of magnitude less. Hence the bar of a hundred times the runtime budget, which
	// admits a chain of loops over data with string functions inside (up to about 2·10⁷) and
	// refuses a loop over data nested in another (10⁸ and up, 7·10⁹ comparing strings).
	EstimatedCostLimit = 100 * CostLimit

	// estimatedMaxSize is the length the static estimate assumes for every list, map and
	// string in an event. Involveo's events are a few kilobytes, so none holds more items or
	// characters than this; larger ones are still bounded by CostLimit and EvalTimeout.
	estimatedMaxSize = 4096

	// interruptCheckFrequency is how many comprehension iterations pass between checks of
	// Eval's context, the value Kubernetes uses: often enough that EvalTimeout or a cancelled
	// context stops a loop within milliseconds, rarely enough to cost nothing measurable.
	interruptCheckFrequency = 100

	// maxListsRange bounds lists.range(n). The library's default of a million would allocate
	// tens of megabytes before the cost limit could stop the evaluation, and a filter has no
	// use for a long sequence of numbers.
	maxListsRange = estimatedMaxSize
)

// Variable names, as the expression sees them.
const (
	varEvent     = "event"
	varTimestamp = "timestamp"
	varData      = "data"
)

// Program is a compiled filter. It is safe for concurrent use: the relay shares one per
// subscription across its workers.
type Program struct {
	src string
	prg cel.Program
}

// String returns the source expression.
func (p *Program) String() string { return p.src }

// CompileError is a filter that does not compile, with the position of the problem where it
// has one, for a subscription's InvalidFilter condition.
type CompileError struct {
	// Message says what is wrong, e.g. "undeclared reference to 'dta'".
	Message string
	// Line and Column are the 1-based position of the problem in the expression, Column
	// counting characters. Both are zero when the problem is the expression as a whole (its
	// length, result type or cost).
	Line, Column int
}

func (e *CompileError) Error() string {
	if e.Line == 0 {
		return "filter: " + e.Message
	}
	return fmt.Sprintf("filter: %d:%d: %s", e.Line, e.Column, e.Message)
}

// environment is built once: building it takes milliseconds, and the relay compiles a filter
// per subscription whenever its routes change.
var environment = sync.OnceValues(func() (*cel.Env, error) {
	return cel.NewEnv(
		cel.Variable(varEvent, cel.StringType),
		cel.Variable(varTimestamp, cel.StringType),
		cel.Variable(varData, cel.DynType),
		// JSON numbers decode to int64 or float64 by spelling (see DecodeData), so a filter
		// must be able to compare the two: data.score > 4.5 with "score": 5.
		cel.CrossTypeNumericComparisons(true),
		cel.DefaultUTCTimeZone(true),
		cel.EagerlyValidateDeclarations(true),
		ext.Strings(ext.StringsVersion(5)),
		ext.Lists(ext.ListsVersion(3), ext.ListsMaxRangeSize(maxListsRange)),
		ext.Sets(ext.SetsVersion(0)),
		ext.TwoVarComprehensions(ext.TwoVarComprehensionsVersion(0)),
		ext.Bindings(ext.BindingsVersion(0)),
	)
})

// Compile parses and type-checks expr and returns the program the relay evaluates. A filter
// that is too long, does not parse or type-check, does not evaluate to a bool or is estimated
// too expensive is reported as a *CompileError; any other error means the CEL environment
// itself could not be built.
func Compile(expr string) (*Program, error) {
	if n := utf8.RuneCountInString(expr); n > MaxExpressionLength {
		return nil, &CompileError{Message: fmt.Sprintf(
			"expression is %d characters long, more than the limit of %d", n, MaxExpressionLength)}
	}
	env, err := environment()
	if err != nil {
		return nil, fmt.Errorf("build CEL environment: %w", err)
	}
	ast, iss := env.Compile(expr)
	if err := iss.Err(); err != nil {
		return nil, compileError(iss)
	}
	if t := ast.OutputType(); !t.IsExactType(types.BoolType) {
		msg := "expression must evaluate to a bool, not " + cel.FormatCELType(t)
		if t.IsExactType(types.DynType) {
			// A bare data field: its type is known only per event, so spell the fix out.
			msg += " (compare the value, e.g. data.flag == true)"
		}
		return nil, &CompileError{Message: msg}
	}
	est, err := env.EstimateCost(ast, sizeEstimator{})
	if err != nil {
		return nil, fmt.Errorf("estimate filter cost: %w", err)
	}
	if est.Max > EstimatedCostLimit {
		return nil, &CompileError{Message: fmt.Sprintf(
			"expression is too expensive: its estimated cost on an event with %d-item lists is %s, "+
				"more than the limit of %d; avoid loops nested inside loops over data "+
				"(sets.intersects compares two lists in one pass)",
			estimatedMaxSize, formatCost(est.Max), EstimatedCostLimit)}
	}
	prg, err := env.Program(ast,
		cel.CostLimit(CostLimit),
		cel.InterruptCheckFrequency(interruptCheckFrequency),
		// Folds constants and compiles regular expressions once here, not per event.
		cel.EvalOptions(cel.OptOptimize),
	)
	if err != nil {
		return nil, &CompileError{Message: err.Error()}
	}
	return &Program{src: expr, prg: prg}, nil
}

// compileError turns CEL's issues into one CompileError: the first problem is the one to fix,
// and a condition message has room for one.
func compileError(iss *cel.Issues) *CompileError {
	errs := iss.Errors()
	if len(errs) == 0 {
		return &CompileError{Message: iss.String()}
	}
	first := errs[0]
	// The filter environment has no container, so CEL's note on where it looked names nothing.
	msg := strings.TrimSuffix(first.Message, " (in container '')")
	line, col := first.Location.Line(), first.Location.Column()
	if line < 1 || col < 0 {
		return &CompileError{Message: msg}
	}
	// CEL's column is 0-based; editors and the example messages count from 1.
	return &CompileError{Message: msg, Line: line, Column: col + 1}
}

// formatCost spells an estimate that saturated (CEL caps at the largest uint64) as
// "unbounded" rather than a twenty-digit number.
func formatCost(c uint64) string {
	if c == checker.UnknownCostEstimate().Max {
		return "unbounded"
	}
	return fmt.Sprint(c)
}

// sizeEstimator gives the static estimate a length for values CEL cannot size from the
// expression alone, that is everything in the event.
type sizeEstimator struct{}

func (sizeEstimator) EstimateSize(checker.AstNode) *checker.SizeEstimate {
	return &checker.SizeEstimate{Min: 0, Max: estimatedMaxSize}
}

func (sizeEstimator) EstimateCallCost(string, string, *checker.AstNode, []checker.AstNode) *checker.CallEstimate {
	return nil
}

// Eval reports whether the event passes the filter: true means deliver, false means the
// subscription filtered it out. data is the event's data as DecodeData returns it, decoded
// once per event and shared by every filter.
//
// A non-nil error means the filter could not decide: it read a key the event does not have
// (data.task on an event without a task), exceeded CostLimit or EvalTimeout, or ctx ended.
// The caller counts it as a filter error, distinct from filtered out, and does not deliver:
// a filter narrows what a receiver asked for, so an event it cannot judge must not reach the
// receiver. Filters that should tolerate a missing key test for it, as in
// has(data.task) && data.task.status == "Готово".
func (p *Program) Eval(ctx context.Context, eventType, timestamp string, data any) (bool, error) {
	ctx, cancel := context.WithTimeoutCause(ctx, EvalTimeout, errEvalTimeout)
	defer cancel()
	out, _, err := p.prg.ContextEval(ctx, &activation{event: eventType, timestamp: timestamp, data: data})
	if err != nil {
		return false, fmt.Errorf("evaluate filter: %w", err)
	}
	b, ok := out.(types.Bool)
	if !ok {
		// Compile only admits bool-typed expressions, so this is a CEL bug, not user error.
		return false, errors.New("evaluate filter: result is " + out.Type().TypeName() + ", not bool")
	}
	return bool(b), nil
}

// errEvalTimeout is the cause of an evaluation stopped by EvalTimeout: its message names the
// limit, and it wraps context.DeadlineExceeded so errors.Is still sees a deadline.
var errEvalTimeout = fmt.Errorf("took longer than %v: %w", EvalTimeout, context.DeadlineExceeded)

// activation resolves the three variables without building a map per evaluation.
type activation struct {
	event, timestamp string
	data             any
}

func (a *activation) ResolveName(name string) (any, bool) {
	switch name {
	case varEvent:
		return types.String(a.event), true
	case varTimestamp:
		return types.String(a.timestamp), true
	case varData:
		return a.data, true
	}
	return nil, false
}

func (a *activation) Parent() cel.Activation { return nil }
