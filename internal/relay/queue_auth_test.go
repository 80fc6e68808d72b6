package relay

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"
)

// pki writes a CA, a server certificate for 127.0.0.1 and a client
// certificate, all PEM, into dir.
type pki struct{ ca, serverCert, serverKey, clientCert, clientKey string }

func newPKI(t *testing.T, dir string) pki {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	p := pki{ca: filepath.Join(dir, "ca.pem")}
	writePEM(t, p.ca, "CERTIFICATE", caDER)
	issue := func(serial int64, name string, usage x509.ExtKeyUsage, ips []net.IP) (certFile, keyFile string) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage}, IPAddresses: ips,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		keyDER, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		certFile, keyFile = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
		writePEM(t, certFile, "CERTIFICATE", der)
		writePEM(t, keyFile, "EC PRIVATE KEY", keyDER)
		return certFile, keyFile
	}
	p.serverCert, p.serverKey = issue(2, "server", x509.ExtKeyUsageServerAuth, []net.IP{net.IPv4(127, 0, 0, 1)})
	p.clientCert, p.clientKey = issue(3, "client", x509.ExtKeyUsageClientAuth, nil)
	return p
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// startSecuredNATS runs JetStream in operator mode (users authenticate with
// a .creds file) behind mutual TLS, as a production cluster is set up, and
// returns the server and a creds file of a user of a JetStream account.
func startSecuredNATS(t *testing.T, p pki) (*server.Server, string) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	operator, err := nkeys.CreateOperator()
	must(err)
	operatorPub, err := operator.PublicKey()
	must(err)
	resolver := &server.MemAccResolver{}
	account := func(js bool) (nkeys.KeyPair, string) {
		kp, err := nkeys.CreateAccount()
		must(err)
		pub, err := kp.PublicKey()
		must(err)
		claims := jwt.NewAccountClaims(pub)
		if js {
			claims.Limits.JetStreamLimits = jwt.JetStreamLimits{MemoryStorage: -1, DiskStorage: -1, Streams: -1, Consumer: -1}
		}
		token, err := claims.Encode(operator)
		must(err)
		must(resolver.Store(pub, token))
		return kp, pub
	}
	_, systemPub := account(false)
	appAccount, _ := account(true)

	user, err := nkeys.CreateUser()
	must(err)
	userPub, err := user.PublicKey()
	must(err)
	userJWT, err := jwt.NewUserClaims(userPub).Encode(appAccount)
	must(err)
	seed, err := user.Seed()
	must(err)
	creds, err := jwt.FormatUserConfig(userJWT, seed)
	must(err)
	credsFile := filepath.Join(t.TempDir(), "relay.creds")
	must(os.WriteFile(credsFile, creds, 0o600))

	tlsConfig, err := server.GenTLSConfig(&server.TLSConfigOpts{
		CertFile: p.serverCert, KeyFile: p.serverKey, CaFile: p.ca, Verify: true})
	must(err)
	srv, err := server.NewServer(&server.Options{
		Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoSigs: true, NoLog: true,
		TrustedOperators: []*jwt.OperatorClaims{jwt.NewOperatorClaims(operatorPub)},
		AccountResolver:  resolver, SystemAccount: systemPub,
		TLS: true, TLSVerify: true, TLSConfig: tlsConfig, TLSTimeout: 2,
	})
	must(err)
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("secured NATS not ready")
	}
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	return srv, credsFile
}

func TestOpenQueue_AuthenticatesToASecuredJetStream(t *testing.T) {
	p := newPKI(t, t.TempDir())
	srv, creds := startSecuredNATS(t, p)
	url := "tls://" + srv.Addr().String()
	full := QueueConfig{NATSURL: url, Replicas: 1, CredsFile: creds, CAFile: p.ca, TLSCert: p.clientCert, TLSKey: p.clientKey,
		EventsMaxBytes: 1 << 20, DeliveriesMaxBytes: 1 << 20, DeadLettersMaxBytes: 1 << 20,
		DeliverAckWait: time.Minute, MaxAckPending: 100, AttemptLogSize: 10}
	tests := []struct {
		name    string
		edit    func(*QueueConfig)
		wantErr bool
	}{
		{name: "connects and declares its streams with the creds file, CA and client certificate", edit: func(*QueueConfig) {}},
		{name: "is refused without the creds file", edit: func(c *QueueConfig) { c.CredsFile = "" }, wantErr: true},
		{name: "is refused without the client certificate", edit: func(c *QueueConfig) { c.TLSCert, c.TLSKey = "", "" }, wantErr: true},
		{name: "does not trust the server without the CA", edit: func(c *QueueConfig) { c.CAFile = "" }, wantErr: true},
		{name: "rejects a client certificate without its key", edit: func(c *QueueConfig) { c.TLSKey = "" }, wantErr: true},
		{name: "rejects credentials for the embedded server", edit: func(c *QueueConfig) { c.NATSURL, c.DataDir = "", t.TempDir() }, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := full
			tt.edit(&cfg)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			q, err := OpenQueue(ctx, cfg, logr.Discard())
			if q != nil {
				defer q.Close()
			}
			t.Logf("OpenQueue: %v", err)
			if (err != nil) != tt.wantErr {
				t.Fatalf("OpenQueue error = %v, wantErr %v", err, tt.wantErr)
			}
		})
	}
}
