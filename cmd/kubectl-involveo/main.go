// Command kubectl-involveo is the kubectl plugin for Involveo webhook
// subscriptions: `kubectl involveo get|attempts|deadletters|redeliver|send-test`.
// Install it on the PATH with
//
//	go install github.com/involveo/webhook-operator/cmd/kubectl-involveo@latest
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/involveo/webhook-operator/internal/kubectlplugin"
)

func main() {
	// Ctrl-C ends a --wait cleanly instead of killing a request mid-flight.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cmd := kubectlplugin.NewCommand(kubectlplugin.Streams{Out: os.Stdout, ErrOut: os.Stderr})
	if err := cmd.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		stop()
		os.Exit(1)
	}
}
