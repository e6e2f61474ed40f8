/* test_http_lookups.c - the rules bounding name lookups that stopped http
 * transfers left running: a suspect host is capped at a quarter of
 * http.max_abandoned_lookups, every host name at the whole of it, and a host
 * with none abandoned, or an address, is never held back. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#include "http_lookups.h"

static bool admit(const struct lookups *l, const char *host, int max)
{
    char why[400] = "";
    bool ok = lookups_admit(l, host, max, why, sizeof(why));
    assert_true(ok == !*why);   /* a refusal always says why */
    return ok;
}

static void test_host_without_abandoned_lookups_is_not_held_back(void **state)
{
    struct lookups l = {0};
    /* Many lookups of a healthy host at once (a cold DNS cache): none
     * abandoned, so nothing is refused. */
    for (int i = 0; i < 100; i++)
        assert_int_equal(lookups_begin(&l, "api.example"), 0);
    assert_true(admit(&l, "api.example", 8));
    for (int i = 0; i < 100; i++)
        lookups_end(&l, "api.example", false);
    assert_int_equal(l.n, 0);
    lookups_free(&l);
}

static void test_suspect_host_capped_at_a_quarter(void **state)
{
    struct lookups l = {0};
    assert_int_equal(lookups_begin(&l, "slow.example"), 0);
    lookups_abandon(&l, "slow.example");
    assert_true(admit(&l, "slow.example", 8));     /* 1 going, 2 a host */
    assert_int_equal(lookups_begin(&l, "SLOW.example"), 0);  /* names ignore case */
    char why[400];
    assert_false(lookups_admit(&l, "slow.example", 8, why, sizeof(why)));
    assert_non_null(strstr(why, "2 lookups of slow.example are still unanswered, 1 of them"));
    assert_true(admit(&l, "other.example", 8));    /* others go on */
    /* The abandoned one ends: not suspect any more, whatever is going. */
    lookups_end(&l, "slow.example", true);
    assert_int_equal(l.abandoned, 0);
    assert_true(admit(&l, "slow.example", 8));
    lookups_end(&l, "slow.example", false);
    assert_int_equal(l.n, 0);
    lookups_free(&l);
}

static void test_all_hosts_capped_at_the_whole(void **state)
{
    struct lookups l = {0};
    const char *names[] = {"a.example", "b.example", "c.example", "d.example"};
    for (int i = 0; i < 4; i++) {
        assert_int_equal(lookups_begin(&l, names[i]), 0);
        lookups_abandon(&l, names[i]);
    }
    char why[400];
    assert_false(lookups_admit(&l, "fresh.example", 4, why, sizeof(why)));
    assert_non_null(strstr(why, "4 name lookups abandoned"));
    lookups_end(&l, "c.example", true);
    assert_true(admit(&l, "fresh.example", 4));
    assert_int_equal(l.n, 3);
    lookups_free(&l);
}

static void test_a_cap_of_one(void **state)
{
    struct lookups l = {0};
    assert_int_equal(lookups_begin(&l, "slow.example"), 0);
    lookups_abandon(&l, "slow.example");
    assert_false(admit(&l, "slow.example", 1));
    assert_false(admit(&l, "other.example", 1));
    lookups_free(&l);
}

static void test_addresses_need_no_lookup(void **state)
{
    assert_false(lookups_needed("127.0.0.1"));
    assert_false(lookups_needed("[::1]"));
    assert_true(lookups_needed("localhost"));
    assert_true(lookups_needed("slow-dns.test"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_host_without_abandoned_lookups_is_not_held_back),
        cmocka_unit_test(test_suspect_host_capped_at_a_quarter),
        cmocka_unit_test(test_all_hosts_capped_at_the_whole),
        cmocka_unit_test(test_a_cap_of_one),
        cmocka_unit_test(test_addresses_need_no_lookup),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
