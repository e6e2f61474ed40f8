/* test_http_policy.c - the address policy http jobs obey unless
 * http.allow_private (issue 3): every private form refused, public ones let
 * through. The e2e tests prove refusal on the wire; this proves the edges,
 * including public addresses that a too-wide rule would refuse. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#include "addr_policy.h"

static bool is_private(const char *text)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    if (strchr(text, ':')) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        a->sin6_family = AF_INET6;
        assert_int_equal(inet_pton(AF_INET6, text, &a->sin6_addr), 1);
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        a->sin_family = AF_INET;
        assert_int_equal(inet_pton(AF_INET, text, &a->sin_addr), 1);
    }
    return addr_is_private((const struct sockaddr *)&ss);
}

/* Every address is checked, and every wrong one named, before failing. */
static void check_all(const char *const *addrs, bool expected)
{
    int wrong = 0;
    for (; *addrs; addrs++) {
        if (is_private(*addrs) != expected) {
            print_error("%s: expected %s\n", *addrs, expected ? "refused" : "allowed");
            wrong++;
        }
    }
    if (wrong)
        fail_msg("%d address(es) judged wrong", wrong);
}

static void test_private_ipv4_refused(void **state)
{
    static const char *const addrs[] = {
        "0.0.0.0", "127.0.0.1", "127.255.255.254", "10.0.0.1", "10.255.255.255",
        "172.16.0.1", "172.31.255.255", "192.168.1.1", "169.254.169.254", /* cloud metadata */
        "100.64.0.1", "100.127.255.255", /* shared address space */
        "192.0.0.8", "198.18.0.1", "198.19.255.255", "224.0.0.1", "239.255.255.250",
        "240.0.0.1", "255.255.255.255", NULL};
    check_all(addrs, true);
}

static void test_public_ipv4_allowed(void **state)
{
    static const char *const addrs[] = {
        "8.8.8.8", "1.1.1.1", "93.184.216.34", "172.15.255.255", "172.32.0.0",
        "100.63.255.255", "100.128.0.0", "169.253.255.255", "192.167.255.255",
        "198.17.255.255", "198.20.0.0", "223.255.255.254", "11.0.0.1", "126.255.255.255",
        NULL};
    check_all(addrs, false);
}

static void test_private_ipv6_refused(void **state)
{
    static const char *const addrs[] = {
        "::", "::1", "::127.0.0.1",                     /* IPv4-compatible */
        "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254",  /* mapped */
        "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe",        /* NAT64 of loopback, metadata */
        "2002:7f00:1::", "2002:c0a8:101::1",            /* 6to4 of 127.0.0.1, 192.168.1.1 */
        "fc00::1", "fd12:3456::1",                      /* unique local */
        "fe80::1", "febf::1",                           /* link-local */
        "fec0::1", "feff::1",                           /* site-local (deprecated) */
        "ff02::1", NULL};                               /* multicast */
    check_all(addrs, true);
}

static void test_public_ipv6_allowed(void **state)
{
    static const char *const addrs[] = {
        "2001:4860:4860::8888", "2606:4700:4700::1111", "::ffff:8.8.8.8",
        "64:ff9b::808:808", "2002:808:808::1", "fbff::1", "fe7f::1", NULL};
    check_all(addrs, false);
}

/* IANA's IPv6 special-purpose blocks that are not globally reachable, each
 * with an address inside (refused) and its nearest neighbours outside
 * (allowed: a too-wide rule would catch them). */
static void test_special_purpose_ipv6(void **state)
{
    static const char *const refused[] = {
        /* NAT64 local-use (RFC 8215): the IPv4 sits where the operator's
         * prefix length puts it, unknown here, so the whole /48 goes, even
         * an address whose last 32 bits read as public. */
        "64:ff9b:1::", "64:ff9b:1::808:808", "64:ff9b:1:ffff:ffff:ffff:ffff:ffff",
        /* IPv4-translated (SIIT, RFC 6145/7915): judged as the IPv4 it holds */
        "::ffff:0:7f00:1", "::ffff:0:a00:1", "::ffff:0:a9fe:a9fe", "::ffff:0:0:0",
        "100::", "100::ffff:ffff:ffff:ffff",            /* discard-only (RFC 6666) */
        "100:0:0:1::", "100:0:0:1:ffff:ffff:ffff:ffff", /* dummy prefix */
        /* 2001::/23, IETF protocol assignments: Teredo (RFC 4380) with a
         * public server and client, benchmarking, deprecated ORCHID, and
         * what is not assigned yet, up to the block's last address */
        "2001::", "2001:0:4136:e378:8000:63bf:3fff:fdd2", "2001:0:ffff:ffff:ffff:ffff:ffff:ffff",
        "2001:1::", "2001:1::4", "2001:2::1", "2001:4:113::1", "2001:10::1",
        "2001:1f:ffff:ffff:ffff:ffff:ffff:ffff", "2001:40::",
        "2001:1ff:ffff:ffff:ffff:ffff:ffff:ffff",
        "2001:db8::", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff",     /* documentation */
        "3fff::", "3fff:fff:ffff:ffff:ffff:ffff:ffff:ffff",         /* documentation (RFC 9637) */
        "5f00::", "5f00:ffff:ffff:ffff:ffff:ffff:ffff:ffff",        /* SRv6 SIDs (RFC 9602) */
        NULL};
    static const char *const allowed[] = {
        "64:ff9b:0:ffff:ffff:ffff:ffff:ffff", "64:ff9b:2::",
        "::ffff:0:808:808",
        "ff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "100:0:0:2::",
        "2000:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "2001:200::",
        /* globally reachable rows inside 2001::/23: PCP, TURN and DNS-SD SRP
         * anycast, AMT, AS112-v6, ORCHIDv2, drone remote ID (DETs) */
        "2001:1::1", "2001:1::2", "2001:1::3", "2001:3::", "2001:3:ffff:ffff:ffff:ffff:ffff:ffff",
        "2001:4:112::", "2001:4:112:ffff:ffff:ffff:ffff:ffff", "2001:20::",
        "2001:2f:ffff:ffff:ffff:ffff:ffff:ffff", "2001:30::",
        "2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", "2001:db9::",
        "3ffe:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "3fff:1000::",
        "5eff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "5f01::",
        NULL};
    check_all(refused, true);
    check_all(allowed, false);
}

static void test_unknown_family_refused(void **state)
{
    struct sockaddr sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_family = AF_UNIX;
    assert_true(addr_is_private(&sa));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_private_ipv4_refused),
        cmocka_unit_test(test_public_ipv4_allowed),
        cmocka_unit_test(test_private_ipv6_refused),
        cmocka_unit_test(test_public_ipv6_allowed),
        cmocka_unit_test(test_special_purpose_ipv6),
        cmocka_unit_test(test_unknown_family_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
