/* test_metrics.c - what the job-duration histogram observes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "metrics.h"

static void test_duration_in_seconds(void **state)
{
    assert_true(metrics_job_seconds(1000, 1250) == 0.25);
    assert_true(metrics_job_seconds(1000, 1000) == 0.0);
}

/* started_at and finished_at are wall-clock times: a clock stepped back
 * while a job ran (NTP, an operator) made its duration negative, which fell
 * into the first bucket and lowered _sum. It counts as 0. */
static void test_clock_stepped_back_counts_as_zero(void **state)
{
    assert_true(metrics_job_seconds(1000, 900) == 0.0);
    assert_true(metrics_job_seconds(INT64_C(1764000000000), INT64_C(1763999000000)) == 0.0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_duration_in_seconds),
        cmocka_unit_test(test_clock_stepped_back_counts_as_zero),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
