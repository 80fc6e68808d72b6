// Package logging builds the structured logger both binaries use.
package logging

import (
	"fmt"
	"log/slog"
	"os"

	"github.com/go-logr/logr"
)

// New returns a JSON logger on stderr at level (debug, info, warn, error).
// Levels more verbose than debug are refused: there client-go dumps request
// and response bodies, among them Secrets holding subscribers' credentials.
func New(level string) (logr.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return logr.Logger{}, fmt.Errorf("--log-level: %w", err)
	}
	if l < slog.LevelDebug {
		return logr.Logger{}, fmt.Errorf("--log-level: %s is more verbose than debug, which would log Secret contents", level)
	}
	return logr.FromSlogHandler(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: l})), nil
}
