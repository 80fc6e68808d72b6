package delivery

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func TestCheckDestination(t *testing.T) {
	tests := []struct {
		name      string
		ip        string
		allow     string
		wantRange string // empty: allowed
	}{
		{name: "allows a public IPv4 address", ip: "93.184.216.34"},
		{name: "allows a public IPv6 address", ip: "2606:2800:220:1:248:1893:25c8:1946"},
		{name: "allows a public IPv4 address written as IPv4-mapped IPv6", ip: "::ffff:93.184.216.34"},
		{name: "allows a public IPv4 address behind the NAT64 prefix", ip: "64:ff9b::5db8:d822"},
		{name: "refuses IPv4 loopback", ip: "127.0.0.1", wantRange: "loopback"},
		{name: "refuses all of 127/8", ip: "127.255.0.9", wantRange: "loopback"},
		{name: "refuses IPv6 loopback", ip: "::1", wantRange: "loopback"},
		{name: "refuses IPv4-mapped loopback", ip: "::ffff:127.0.0.1", wantRange: "loopback"},
		{name: "refuses loopback behind the NAT64 prefix", ip: "64:ff9b::7f00:1", wantRange: "loopback"},
		{name: "refuses 10/8", ip: "10.1.2.3", wantRange: "private network (RFC 1918)"},
		{name: "refuses 172.16/12", ip: "172.31.255.255", wantRange: "private network (RFC 1918)"},
		{name: "allows the address just past 172.16/12", ip: "172.32.0.1"},
		{name: "refuses 192.168/16", ip: "192.168.0.1", wantRange: "private network (RFC 1918)"},
		{name: "refuses IPv4-mapped RFC 1918", ip: "::ffff:10.0.0.1", wantRange: "private network (RFC 1918)"},
		{name: "refuses the cloud metadata address", ip: "169.254.169.254", wantRange: "cloud metadata service (link-local)"},
		{name: "refuses IPv4 link-local", ip: "169.254.1.1", wantRange: "link-local"},
		{name: "refuses IPv6 link-local", ip: "fe80::1", wantRange: "link-local"},
		{name: "refuses IPv6 link-local with a zone", ip: "fe80::1%eth0", wantRange: "link-local"},
		{name: "refuses carrier-grade NAT", ip: "100.64.0.1", wantRange: "carrier-grade NAT (RFC 6598)"},
		{name: "refuses unique-local IPv6", ip: "fd00::1", wantRange: "unique-local (RFC 4193)"},
		{name: "refuses the AWS IPv6 metadata address", ip: "fd00:ec2::254", wantRange: "cloud metadata service (unique-local)"},
		{name: "refuses the IPv4 unspecified address", ip: "0.0.0.0", wantRange: "unspecified address"},
		{name: "refuses the IPv6 unspecified address", ip: "::", wantRange: "unspecified address"},
		{name: "refuses the rest of 0/8", ip: "0.1.2.3", wantRange: `"this network" (RFC 791)`},
		{name: "refuses IPv4 multicast", ip: "224.0.0.1", wantRange: "multicast"},
		{name: "refuses IPv6 multicast", ip: "ff02::1", wantRange: "multicast"},
		{name: "refuses broadcast", ip: "255.255.255.255", wantRange: "broadcast"},
		{name: "refuses reserved 240/4", ip: "240.0.0.1", wantRange: "reserved (RFC 1112)"},
		{name: "refuses IETF protocol assignments", ip: "192.0.0.8", wantRange: "IETF protocol assignments (RFC 6890)"},
		{name: "refuses benchmarking addresses", ip: "198.19.0.1", wantRange: "benchmarking (RFC 2544)"},
		{name: "refuses documentation addresses", ip: "203.0.113.7", wantRange: "documentation (TEST-NET-3)"},
		{name: "allows loopback listed in the allow-list", ip: "127.0.0.1", allow: "127.0.0.1"},
		{name: "allows IPv4-mapped loopback when its IPv4 address is allowed", ip: "::ffff:127.0.0.1", allow: "127.0.0.0/8"},
		{name: "allows a private address inside an allowed CIDR", ip: "10.20.30.40", allow: "192.168.0.0/16, 10.0.0.0/8"},
		{name: "still refuses a blocked address outside the allow-list", ip: "10.20.30.40", allow: "10.20.31.0/24", wantRange: "private network (RFC 1918)"},
		{name: "does not let an IPv4 allow-list open IPv6 loopback", ip: "::1", allow: "127.0.0.1", wantRange: "loopback"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			allow, err := ParseCIDRs(tt.allow)
			if err != nil {
				t.Fatal(err)
			}
			err = CheckDestination(netip.MustParseAddr(tt.ip), allow)
			if tt.wantRange == "" {
				if err != nil {
					t.Fatalf("CheckDestination(%s) = %v, want allowed", tt.ip, err)
				}
				return
			}
			var refused *DestinationError
			if !errors.As(err, &refused) {
				t.Fatalf("CheckDestination(%s) = %v, want a *DestinationError", tt.ip, err)
			}
			if refused.Range != tt.wantRange {
				t.Errorf("range = %q, want %q", refused.Range, tt.wantRange)
			}
			if !strings.Contains(err.Error(), "is not allowed: "+tt.wantRange+" (allow it with --allow-destination-cidrs)") {
				t.Errorf("error %q does not name the range and the flag", err)
			}
		})
	}
}

func TestCheckDestination_RefusesEveryBlockedRange(t *testing.T) {
	for _, r := range blockedRanges {
		for _, ip := range []netip.Addr{r.prefix.Addr(), lastAddr(r.prefix)} {
			if err := CheckDestination(ip, nil); err == nil {
				t.Errorf("%s (in %s, %s) was allowed", ip, r.prefix, r.name)
			}
			if err := CheckDestination(ip, []netip.Prefix{r.prefix}); err != nil {
				t.Errorf("%s was refused although %s is allowed: %v", ip, r.prefix, err)
			}
		}
	}
}

func TestCheckDestination_RefusesAnInvalidAddress(t *testing.T) {
	if err := CheckDestination(netip.Addr{}, nil); err == nil {
		t.Fatal("the zero Addr was allowed")
	}
}

// lastAddr is the highest address of p.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	ip, _ := netip.AddrFromSlice(b)
	return ip
}

func TestParseCIDRs(t *testing.T) {
	tests := []struct {
		name    string
		list    string
		want    []string
		wantErr string
	}{
		{name: "returns nothing for an empty flag", list: "", want: nil},
		{name: "parses one CIDR", list: "10.0.0.0/8", want: []string{"10.0.0.0/8"}},
		{name: "parses a comma-separated list with spaces", list: "10.0.0.0/8, 192.168.1.0/24 ,fd00::/8", want: []string{"10.0.0.0/8", "192.168.1.0/24", "fd00::/8"}},
		{name: "turns a bare IPv4 address into a /32", list: "127.0.0.1", want: []string{"127.0.0.1/32"}},
		{name: "turns a bare IPv6 address into a /128", list: "::1", want: []string{"::1/128"}},
		{name: "clears host bits of a CIDR", list: "10.1.2.3/8", want: []string{"10.0.0.0/8"}},
		{name: "ignores empty items and a trailing comma", list: "127.0.0.1,,", want: []string{"127.0.0.1/32"}},
		{name: "names a malformed item", list: "10.0.0.0/8,not-an-ip", wantErr: `destination CIDR "not-an-ip"`},
		{name: "names an item with an impossible prefix length", list: "10.0.0.0/33", wantErr: `destination CIDR "10.0.0.0/33"`},
		{name: "rejects an IPv6 zone", list: "fe80::1%eth0", wantErr: `destination CIDR "fe80::1%eth0": an IPv6 zone`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseCIDRs(tt.list)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseCIDRs(%q) error = %v, want one containing %q", tt.list, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var gotStrings []string
			for _, p := range got {
				gotStrings = append(gotStrings, p.String())
			}
			if !slices.Equal(gotStrings, tt.want) {
				t.Errorf("ParseCIDRs(%q) = %v, want %v", tt.list, gotStrings, tt.want)
			}
		})
	}
}
