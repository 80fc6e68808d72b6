// Command dev runs the product locally for `make dev`: a real API server, the
// relay and the manager, the samples, and a demo receiver that prints what it
// gets. Ctrl-C stops everything.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/involveo/webhook-operator/api/v1alpha1"
	"github.com/involveo/webhook-operator/internal/devenv"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "dev:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		o         devenv.Options
		receiver  string
		samples   string
		sampleNS  string
		readyWait time.Duration
	)
	flag.StringVar(&o.Dir, "dir", ".dev", "folder for the kubeconfig, relay data and logs")
	flag.StringVar(&o.ManagerBin, "manager", "bin/manager", "manager binary")
	flag.StringVar(&o.RelayBin, "relay", "bin/relay", "relay binary")
	flag.StringVar(&o.IngestAddr, "ingest", "127.0.0.1:8080", "relay ingest address")
	flag.StringVar(&o.AdminAddr, "admin", "127.0.0.1:9090", "relay admin address")
	flag.StringVar(&receiver, "receiver", "127.0.0.1:9999", "demo receiver address (the samples point here)")
	flag.StringVar(&samples, "samples", "config/samples", "manifests to apply")
	flag.StringVar(&sampleNS, "sample-namespace", "demo", "namespace for the samples")
	flag.DurationVar(&readyWait, "ready-timeout", 2*time.Minute, "how long to wait for the samples to become Ready")
	flag.Parse()
	o.Progress = os.Stdout

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	fmt.Println("\033[1mInvolveo webhook operator — local environment\033[0m")
	rcv, err := devenv.StartReceiver(receiver, os.Stdout)
	if err != nil {
		return err
	}
	defer rcv.Close()
	env, err := devenv.Start(ctx, o)
	if err != nil {
		return err
	}
	defer func() {
		fmt.Println("\n\033[36m==>\033[0m stopping the manager, the relay and the API server")
		env.Stop()
		fmt.Println("\033[36m==>\033[0m stopped")
	}()

	fmt.Printf("\033[36m==>\033[0m applying %s to namespace %s\n", samples, sampleNS)
	if err := env.EnsureNamespace(ctx, sampleNS); err != nil {
		return err
	}
	if _, err := env.ApplyDir(ctx, samples, sampleNS); err != nil {
		return err
	}
	fmt.Println("\033[36m==>\033[0m waiting for the subscriptions to become Ready")
	if err := waitReady(ctx, env, sampleNS, readyWait); err != nil {
		return fmt.Errorf("%w (logs: %s, %s)", err, env.ManagerLog, env.RelayLog)
	}
	printBox(env, sampleNS)

	go watchStatus(ctx, env, sampleNS)
	<-ctx.Done()
	return nil
}

func waitReady(ctx context.Context, env *devenv.Env, ns string, within time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		var list v1alpha1.WebhookSubscriptionList
		if err := env.Client.List(ctx, &list, client.InNamespace(ns)); err == nil && len(list.Items) > 0 {
			ready := 0
			for _, s := range list.Items {
				if meta.IsStatusConditionTrue(s.Status.Conditions, v1alpha1.ConditionReady) {
					ready++
				}
			}
			if ready == len(list.Items) {
				return nil
			}
		}
		if err := env.Exited(); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("subscriptions not Ready: %w", ctx.Err())
		case <-tick.C:
		}
	}
}

func printBox(env *devenv.Env, ns string) {
	kc := fmt.Sprintf("%s --kubeconfig %s", env.Kubectl, env.Kubeconfig)
	event := filepath.Join("internal", "event", "testdata", "task.published.json")
	lines := []string{
		"\033[1;32mready\033[0m — the manager, the relay and a demo receiver are running.",
		"",
		"kubectl (built with the control plane):",
		"  alias k='" + kc + "'",
		"  k get whs -n " + ns,
		"  k describe whs crm-sync -n " + ns,
		"  k wait whs --all -n " + ns + " --for=condition=Ready",
		"",
		"send an Involveo event (or: make dev-event EVENT=task.status_changed):",
		"  curl -sS -H 'Content-Type: application/json' \\",
		"    --data-binary @" + event + " " + env.Ingest + "/v1/events",
		"",
		"relay health:  curl -sS " + env.Admin + "/v1/subscriptions",
		"logs:          " + env.ManagerLog + "  " + env.RelayLog,
		"Ctrl-C stops everything.",
	}
	bar := strings.Repeat("─", 78)
	fmt.Println("\n┌" + bar)
	for _, l := range lines {
		fmt.Println("│ " + l)
	}
	fmt.Println("└" + bar)
}

// watchStatus prints each change of a subscription's conditions, the way
// `kubectl get whs -w` would, but readable at a glance.
func watchStatus(ctx context.Context, env *devenv.Env, ns string) {
	seen := map[string]string{}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		var list v1alpha1.WebhookSubscriptionList
		if err := env.Client.List(ctx, &list, client.InNamespace(ns)); err == nil {
			for _, s := range list.Items {
				line := statusLine(&s)
				if seen[s.Name] != line {
					seen[s.Name] = line
					fmt.Printf("\033[35m● %s/%s\033[0m %s\n", ns, s.Name, line)
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func statusLine(s *v1alpha1.WebhookSubscription) string {
	var parts []string
	for _, t := range []string{v1alpha1.ConditionReady, v1alpha1.ConditionDeliveryHealthy} {
		c := meta.FindStatusCondition(s.Status.Conditions, t)
		if c == nil {
			continue
		}
		parts = append(parts, fmt.Sprintf("%s=%s (%s)", t, c.Status, c.Reason))
	}
	if d := s.Status.Delivery; d != nil {
		parts = append(parts, fmt.Sprintf("delivered=%d failed=%d dead=%d", d.Succeeded, d.Failed, d.DeadLettered))
	}
	return strings.Join(parts, "  ")
}
