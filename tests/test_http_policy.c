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

static void check_all(const char *const *addrs, bool expected)
{
    for (; *addrs; addrs++) {
        if (is_private(*addrs) != expected)
            fail_msg("%s: expected %s", *addrs, expected ? "refused" : "allowed");
    }
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
        cmocka_unit_test(test_unknown_family_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
