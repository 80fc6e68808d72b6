package delivery

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// blockedRanges are the destinations a delivery may not reach unless an operator lists
// them in --allow-destination-cidrs. A subscription's URL is chosen by a tenant, and the
// relay runs inside the cluster: without this guard a tenant could make the relay POST
// (with its own headers) to the cloud metadata service, the Kubernetes API, a pod on the
// private network or a service listening on the relay's loopback.
//
// The list is IANA's special-purpose registries (RFC 6890 and successors) minus the
// few entries that are globally reachable. The first matching entry names the refusal,
// so more specific entries come before the ranges that contain them.
var blockedRanges = []struct {
	prefix netip.Prefix
	name   string
}{
	{netip.MustParsePrefix("0.0.0.0/32"), "unspecified address"},
	{netip.MustParsePrefix("0.0.0.0/8"), `"this network" (RFC 791)`},
	{netip.MustParsePrefix("10.0.0.0/8"), "private network (RFC 1918)"},
	{netip.MustParsePrefix("100.64.0.0/10"), "carrier-grade NAT (RFC 6598)"},
	{netip.MustParsePrefix("127.0.0.0/8"), "loopback"},
	{netip.MustParsePrefix("169.254.169.254/32"), "cloud metadata service (link-local)"},
	{netip.MustParsePrefix("169.254.0.0/16"), "link-local"},
	{netip.MustParsePrefix("172.16.0.0/12"), "private network (RFC 1918)"},
	{netip.MustParsePrefix("192.0.0.0/24"), "IETF protocol assignments (RFC 6890)"},
	{netip.MustParsePrefix("192.0.2.0/24"), "documentation (TEST-NET-1)"},
	{netip.MustParsePrefix("192.88.99.0/24"), "6to4 relay anycast (RFC 7526)"},
	{netip.MustParsePrefix("192.168.0.0/16"), "private network (RFC 1918)"},
	{netip.MustParsePrefix("198.18.0.0/15"), "benchmarking (RFC 2544)"},
	{netip.MustParsePrefix("198.51.100.0/24"), "documentation (TEST-NET-2)"},
	{netip.MustParsePrefix("203.0.113.0/24"), "documentation (TEST-NET-3)"},
	{netip.MustParsePrefix("224.0.0.0/4"), "multicast"},
	{netip.MustParsePrefix("255.255.255.255/32"), "broadcast"},
	{netip.MustParsePrefix("240.0.0.0/4"), "reserved (RFC 1112)"},
	{netip.MustParsePrefix("::/128"), "unspecified address"},
	{netip.MustParsePrefix("::1/128"), "loopback"},
	{netip.MustParsePrefix("::/96"), "IPv4-compatible IPv6 (deprecated, RFC 4291)"},
	{netip.MustParsePrefix("64:ff9b:1::/48"), "local-use NAT64 (RFC 8215)"},
	{netip.MustParsePrefix("100::/64"), "discard-only (RFC 6666)"},
	{netip.MustParsePrefix("2001:db8::/32"), "documentation (RFC 3849)"},
	{netip.MustParsePrefix("fd00:ec2::254/128"), "cloud metadata service (unique-local)"},
	{netip.MustParsePrefix("fc00::/7"), "unique-local (RFC 4193)"},
	{netip.MustParsePrefix("fe80::/10"), "link-local"},
	{netip.MustParsePrefix("fec0::/10"), "site-local (deprecated, RFC 3879)"},
	{netip.MustParsePrefix("ff00::/8"), "multicast"},
}

// nat64Prefix is the well-known NAT64 prefix (RFC 6052): on an IPv6-only network with a
// NAT64 gateway, 64:ff9b::7f00:1 reaches 127.0.0.1 of the gateway's IPv4 side, so the
// embedded IPv4 address is checked like a plain one instead of the prefix being refused
// outright (which would cut IPv6-only clusters off from every IPv4 endpoint).
var nat64Prefix = netip.MustParsePrefix("64:ff9b::/96")

// DestinationError is the refusal of a destination address by CheckDestination.
type DestinationError struct {
	// Addr is the refused address, as dialled.
	Addr netip.Addr
	// Range names the blocked range Addr falls in, such as "loopback".
	Range string
}

func (e *DestinationError) Error() string {
	return fmt.Sprintf("destination %s is not allowed: %s (allow it with --allow-destination-cidrs)", e.Addr, e.Range)
}

// CheckDestination returns a *DestinationError when ip lies in a blocked range (loopback,
// private, link-local, metadata, multicast, …) and in none of allow, and nil otherwise.
// IPv4-mapped and NAT64 IPv6 addresses are judged by the IPv4 address they carry, so
// ::ffff:127.0.0.1 is loopback.
func CheckDestination(ip netip.Addr, allow []netip.Prefix) error {
	if !ip.IsValid() {
		return &DestinationError{Addr: ip, Range: "not a valid IP address"}
	}
	// Prefix.Contains is false for any address with a zone, so a zone ("fe80::1%eth0")
	// would otherwise slip past every entry.
	ip = ip.WithZone("")
	effective := carriedIPv4(ip)
	for _, p := range allow {
		if p.Contains(ip) || p.Contains(effective) {
			return nil
		}
	}
	for _, r := range blockedRanges {
		if r.prefix.Contains(effective) {
			return &DestinationError{Addr: ip, Range: r.name}
		}
	}
	return nil
}

// carriedIPv4 returns the IPv4 address an IPv6 address stands for when it is
// IPv4-mapped (::ffff:a.b.c.d) or uses the well-known NAT64 prefix, and ip otherwise.
func carriedIPv4(ip netip.Addr) netip.Addr {
	if ip.Is4In6() {
		return ip.Unmap()
	}
	if nat64Prefix.Contains(ip) {
		b := ip.As16()
		return netip.AddrFrom4([4]byte(b[12:]))
	}
	return ip
}

// ParseCIDRs parses a comma-separated list of CIDRs and bare IP addresses (the value of
// --allow-destination-cidrs). A bare address becomes a single-address prefix (/32 or
// /128); host bits of a CIDR are cleared. Empty items are ignored, so "" means none.
func ParseCIDRs(list string) ([]netip.Prefix, error) {
	var prefixes []netip.Prefix
	for item := range strings.SplitSeq(list, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		p, err := parseCIDR(item)
		if err != nil {
			return nil, fmt.Errorf("destination CIDR %q: %w", item, err)
		}
		prefixes = append(prefixes, p)
	}
	return prefixes, nil
}

func parseCIDR(item string) (netip.Prefix, error) {
	if strings.Contains(item, "/") {
		p, err := netip.ParsePrefix(item)
		if err != nil {
			return netip.Prefix{}, err
		}
		return p.Masked(), nil
	}
	ip, err := netip.ParseAddr(item)
	if err != nil {
		return netip.Prefix{}, err
	}
	if ip.Zone() != "" {
		return netip.Prefix{}, errors.New("an IPv6 zone cannot be matched against a destination")
	}
	return netip.PrefixFrom(ip, ip.BitLen()), nil
}
