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

static bool ipv6_private(const unsigned char *b)
{
    static const unsigned char zero[12] = {0};
    static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    static const unsigned char nat64[12] = {0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0};
    uint32_t v4 = (uint32_t)b[12] << 24 | (uint32_t)b[13] << 16 | (uint32_t)b[14] << 8 | b[15];
    /* ::/96 holds ::, ::1 and the deprecated IPv4-compatible form: refuse it
     * whole. IPv4 in disguise (mapped, NAT64, 6to4) is judged as IPv4. */
    if (!memcmp(b, zero, 12))
        return true;
    if (!memcmp(b, mapped, 12) || !memcmp(b, nat64, 12))
        return ipv4_private(v4);
    if (b[0] == 0x20 && b[1] == 0x02)
        return ipv4_private((uint32_t)b[2] << 24 | (uint32_t)b[3] << 16 | (uint32_t)b[4] << 8 |
                            b[5]);
    return (b[0] & 0xfe) == 0xfc ||                 /* fc00::/7 unique local */
           (b[0] == 0xfe && (b[1] & 0x80)) ||        /* fe80::/10 link-local, fec0::/10 site-local */
           b[0] == 0xff;                            /* multicast */
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
