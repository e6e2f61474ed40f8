/* test_queued_replies.c - the refusals of commands queued in a MULTI
 * (queued_replies.h): numbered by their place in their transaction, taken
 * by the transaction they belong to; an earlier transaction's, whose EXEC
 * reply never came, are forgotten, and a later one's are kept for it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>

#include <cmocka.h>

#include "queued_replies.h"

static int reset(void **state)
{
    (void)state;
    queued_replies_reset();
    return 0;
}

static void places_count_every_reply(void **state)
{
    (void)state;
    queued_reply_note(1, NULL);
    queued_reply_note(1, "NOPERM a");
    queued_reply_note(1, NULL);
    queued_reply_note(1, "ERR b");
    struct queued_refusal *v;
    assert_int_equal(queued_refusals_take(1, &v), 2);
    assert_int_equal(v[0].cmd, 1);
    assert_string_equal(v[0].err, "NOPERM a");
    assert_int_equal(v[1].cmd, 3);
    assert_string_equal(v[1].err, "ERR b");
    queued_refusals_free(v, 2);
    /* Taken once. */
    assert_int_equal(queued_refusals_take(1, &v), 0);
    assert_null(v);
}

static void each_transaction_takes_its_own(void **state)
{
    (void)state;
    queued_reply_note(1, "NOPERM one");     /* its EXEC reply was lost */
    queued_reply_note(2, NULL);
    queued_reply_note(2, "NOPERM two");
    queued_reply_note(3, "NOPERM three");   /* queued before 2's EXEC reply came */
    struct queued_refusal *v;
    assert_int_equal(queued_refusals_take(2, &v), 1);
    assert_int_equal(v[0].cmd, 1);
    assert_string_equal(v[0].err, "NOPERM two");
    queued_refusals_free(v, 1);
    assert_int_equal(queued_refusals_take(1, &v), 0);   /* forgotten */
    assert_int_equal(queued_refusals_take(3, &v), 1);
    assert_int_equal(v[0].cmd, 0);                      /* its own places */
    assert_string_equal(v[0].err, "NOPERM three");
    queued_refusals_free(v, 1);
}

static void many_refusals(void **state)
{
    (void)state;
    for (int i = 0; i < 1000; i++)
        queued_reply_note(7, i % 2 ? "NOPERM" : NULL);
    struct queued_refusal *v;
    assert_int_equal(queued_refusals_take(7, &v), 500);
    for (int i = 0; i < 500; i++)
        assert_int_equal(v[i].cmd, 2 * i + 1);
    queued_refusals_free(v, 500);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(places_count_every_reply, reset),
        cmocka_unit_test_setup(each_transaction_takes_its_own, reset),
        cmocka_unit_test_setup(many_refusals, reset),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
