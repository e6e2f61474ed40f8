/* addr_policy.c - the address policy of http jobs (README, http): what the
 * open-socket and pre-request callbacks of exec_http.c refuse unless
 * http.allow_private. Kept apart from the transfer code because it is pure
 * and its edges (a public neighbour a too-wide rule would refuse) are what
 * tests/test_http_policy.c checks. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>

#include "addr_policy.h"

static bool ipv4_private(uint32_t a)    /* host byte order */
{
    return (a >> 24) == 0 || (a >> 24) == 10 || (a >> 24) == 127 ||
           (a & 0xffc00000u) == 0x64400000u ||      /* 100.64/10 shared */
           (a & 0xffff0000u) == 0xa9fe0000u ||      /* 169.254/16 link-local, metadata */
           (a & 0xfff00000u) == 0xac100000u ||      /* 172.16/12 */
           (a & 0xffff0000u) == 0xc0a80000u ||      /* 192.168/16 */
           (a & 0xffffff00u) == 0xc0000000u ||      /* 192.0.0/24 */
           (a & 0xfffe0000u) == 0xc6120000u ||      /* 198.18/15 benchmarking */
           (a >> 28) >= 0xe;                        /* multicast, reserved, broadcast */
}

/* A block of IPv6 addresses: the first BITS bits of PREFIX. */
struct block6 {
    unsigned char prefix[16];
    unsigned bits;
};

static bool in_block(const unsigned char *b, const struct block6 *k)
{
    unsigned whole = k->bits / 8, rest = k->bits % 8;
    if (memcmp(b, k->prefix, whole))
        return false;
    return !rest || !((b[whole] ^ k->prefix[whole]) & (0xff00u >> rest) & 0xffu);
}

static bool in_any(const unsigned char *b, const struct block6 *blocks, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (in_block(b, &blocks[i]))
            return true;
    return false;
}

/* IANA's IPv6 special-purpose registry (iana-ipv6-special-registry), the
 * rows whose "Globally Reachable" is False, plus the scoped and deprecated
 * blocks that RFC 4291 and RFC 3879 set apart. The IPv4-embedding rows
 * (::/96, mapped, translated, NAT64, 6to4) are judged in ipv6_private(). */
static const struct block6 unreachable[] = {
    /* 64:ff9b:1::/48 local-use NAT64 (RFC 8215): where its IPv4 address
     * sits depends on the prefix length the operator picked (RFC 6052, /48
     * to /96), which cannot be told from the address: the whole /48. */
    {{0x00, 0x64, 0xff, 0x9b, 0x00, 0x01}, 48},
    {{0x01, 0x00}, 64},                                 /* 100::/64 discard-only (RFC 6666) */
    {{0x01, 0x00, 0, 0, 0, 0, 0x00, 0x01}, 64},         /* 100:0:0:1::/64 dummy prefix */
    /* 2001::/23 IETF protocol assignments, as a whole; its globally
     * reachable rows are in `reachable` below. Teredo (2001::/32) is
     * refused whole: the registry does not call it globally reachable, and
     * its embedded IPv4 addresses (server, and client XOR 0xffffffff) say
     * where a relay forwards, which jobd neither controls nor sees; no
     * service an http job should fetch lives at a Teredo address. */
    {{0x20, 0x01, 0x00, 0x00}, 23},
    {{0x20, 0x01, 0x0d, 0xb8}, 32},                     /* documentation (RFC 3849) */
    {{0x3f, 0xff}, 20},                                 /* documentation (RFC 9637) */
    {{0x5f, 0x00}, 16},                                 /* SRv6 SIDs (RFC 9602) */
    {{0xfc}, 7},                                        /* unique local */
    {{0xfe, 0x80}, 10},                                 /* link-local */
    {{0xfe, 0xc0}, 10},                                 /* site-local (deprecated) */
    {{0xff}, 8},                                        /* multicast */
};

/* Rows inside 2001::/23 that the registry calls globally reachable. */
static const struct block6 reachable[] = {
    {{0x20, 0x01, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01}, 128}, /* PCP anycast */
    {{0x20, 0x01, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02}, 128}, /* TURN anycast */
    {{0x20, 0x01, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x03}, 128}, /* DNS-SD SRP */
    {{0x20, 0x01, 0x00, 0x03}, 32},                     /* AMT */
    {{0x20, 0x01, 0x00, 0x04, 0x01, 0x12}, 48},         /* AS112-v6 */
    {{0x20, 0x01, 0x00, 0x20}, 28},                     /* ORCHIDv2 */
    {{0x20, 0x01, 0x00, 0x30}, 28},                     /* drone remote ID (DETs) */
};

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

static bool ipv6_private(const unsigned char *b)
{
    static const unsigned char zero[12] = {0};
    static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    static const unsigned char translated[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0};
    static const unsigned char nat64[12] = {0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0};
    uint32_t v4 = (uint32_t)b[12] << 24 | (uint32_t)b[13] << 16 | (uint32_t)b[14] << 8 | b[15];
    /* ::/96 holds ::, ::1 and the deprecated IPv4-compatible form: refuse it
     * whole. IPv4 in disguise (mapped, SIIT's IPv4-translated, NAT64's
     * well-known /96, 6to4) is judged as IPv4. */
    if (!memcmp(b, zero, 12))
        return true;
    if (!memcmp(b, mapped, 12) || !memcmp(b, translated, 12) || !memcmp(b, nat64, 12))
        return ipv4_private(v4);
    if (b[0] == 0x20 && b[1] == 0x02)
        return ipv4_private((uint32_t)b[2] << 24 | (uint32_t)b[3] << 16 | (uint32_t)b[4] << 8 |
                            b[5]);
    return in_any(b, unreachable, COUNT(unreachable)) && !in_any(b, reachable, COUNT(reachable));
}

bool addr_is_private(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET)
        return ipv4_private(ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr));
    if (sa->sa_family == AF_INET6)
        return ipv6_private(((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr);
    return true;
}

bool addr_text_is_private(const char *ip)
{
    struct in_addr v4;
    struct in6_addr v6;
    if (inet_pton(AF_INET, ip, &v4) == 1)
        return ipv4_private(ntohl(v4.s_addr));
    if (inet_pton(AF_INET6, ip, &v6) == 1)
        return ipv6_private(v6.s6_addr);
    return true;
}
