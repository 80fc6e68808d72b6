package chaos

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
)

// BenchmarkEmbeddedStore_Sync measures what JetStream's `sync always` costs
// next to its default (fsync every 2 minutes, the data in the OS page cache
// meanwhile) on the store path of ingest: a synchronous publish of a 1 KiB
// event, with a message id, to a file-backed single-replica stream on an
// embedded server — what the relay waits for before answering 202. With the
// default, an acknowledged event survives a process crash (the page cache
// outlives the process) but not a machine or kernel crash within the
// interval; `sync always` closes that window at the price measured here.
//
//	go test -run '^$' -bench EmbeddedStore_Sync -benchtime 3s ./test/chaos/
func BenchmarkEmbeddedStore_Sync(b *testing.B) {
	body := bytes.Repeat([]byte("x"), 1024)
	for _, mode := range []struct {
		name   string
		always bool
	}{{"interval", false}, {"always", true}} {
		for _, publishers := range []int{1, 64} {
			b.Run(fmt.Sprintf("sync=%s/publishers=%d", mode.name, publishers), func(b *testing.B) {
				js := embeddedJetStream(b, mode.always)
				b.ResetTimer()
				var wg sync.WaitGroup
				for p := range publishers {
					n := b.N / publishers
					if p < b.N%publishers {
						n++
					}
					wg.Go(func() {
						for range n {
							msg := &nats.Msg{Subject: "bench.event", Data: body}
							if _, err := js.PublishMsg(context.Background(), msg, jetstream.WithMsgID(nuid.Next())); err != nil {
								b.Error(err)
								return
							}
						}
					})
				}
				wg.Wait()
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
			})
		}
	}
}

func embeddedJetStream(b *testing.B, syncAlways bool) jetstream.JetStream {
	b.Helper()
	srv, err := server.NewServer(&server.Options{
		JetStream: true, StoreDir: b.TempDir(), DontListen: true, NoSigs: true, NoLog: true,
		SyncAlways: syncAlways,
	})
	if err != nil {
		b.Fatal(err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		b.Fatal("embedded NATS not ready")
	}
	b.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	nc, err := nats.Connect("", nats.InProcessServer(srv))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := js.CreateStream(context.Background(), jetstream.StreamConfig{
		Name: "BENCH", Subjects: []string{"bench.>"}, Storage: jetstream.FileStorage, Duplicates: time.Hour,
	}); err != nil {
		b.Fatal(err)
	}
	return js
}
