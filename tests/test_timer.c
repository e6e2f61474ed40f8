/* test_timer.c - the timerfd-backed precise timer (timer.h) on a real event
 * loop: it fires once, not before its time and well under the coarse clock's
 * 4 ms tick; re-arming replaces the time; a cancel holds even when the timer
 * had already expired and its readiness was waiting in the loop. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <unistd.h>

#include <cmocka.h>
#include <event2/event.h>

#include "timer.h"

struct probe {
    struct event_base *base;
    int fired;
    int64_t at_us;
};

static void on_fire(void *arg)
{
    struct probe *p = arg;
    p->fired++;
    p->at_us = mono_us();
    event_base_loopbreak(p->base);
}

static void stop_loop(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    event_base_loopbreak(arg);
}

/* Run the loop until the timer fires or MS milliseconds pass. */
static void run_for_ms(struct probe *p, int ms)
{
    struct event *guard = evtimer_new(p->base, stop_loop, p->base);
    timer_add_ms(guard, ms);
    event_base_dispatch(p->base);
    event_free(guard);
}

static int setup(void **state)
{
    struct probe *p = calloc(1, sizeof(*p));
    p->base = event_base_new();
    *state = p;
    return p->base ? 0 : -1;
}

static int teardown(void **state)
{
    struct probe *p = *state;
    event_base_free(p->base);
    free(p);
    return 0;
}

static void test_fires_once_after_its_time(void **state)
{
    struct probe *p = *state;
    struct precise_timer *t = precise_timer_new(p->base, on_fire, p);
    assert_non_null(t);
    assert_false(precise_timer_pending(t));
    int64_t armed = mono_us();
    assert_int_equal(precise_timer_arm(t, 700), 0);
    assert_true(precise_timer_pending(t));
    run_for_ms(p, 2000);
    assert_int_equal(p->fired, 1);
    assert_false(precise_timer_pending(t));
    assert_true(p->at_us - armed >= 700);
    assert_true(p->at_us - armed < 500000);     /* not lost; timing itself is not tested */
    run_for_ms(p, 20);                           /* one-shot: nothing more */
    assert_int_equal(p->fired, 1);
    precise_timer_free(t);
}

static void test_rearming_replaces_the_time(void **state)
{
    struct probe *p = *state;
    struct precise_timer *t = precise_timer_new(p->base, on_fire, p);
    precise_timer_arm(t, 10 * 1000000);
    int64_t armed = mono_us();
    precise_timer_arm(t, 1000);
    run_for_ms(p, 5000);
    assert_int_equal(p->fired, 1);
    assert_true(p->at_us - armed < 4000000);
    precise_timer_free(t);
}

static void test_cancel_holds_even_after_expiry(void **state)
{
    struct probe *p = *state;
    struct precise_timer *t = precise_timer_new(p->base, on_fire, p);
    precise_timer_arm(t, 1);
    usleep(2000);                               /* expired: its fd is readable */
    precise_timer_cancel(t);
    assert_false(precise_timer_pending(t));
    run_for_ms(p, 20);
    assert_int_equal(p->fired, 0);
    /* And it can be armed again afterwards. */
    precise_timer_arm(t, 100);
    run_for_ms(p, 2000);
    assert_int_equal(p->fired, 1);
    precise_timer_free(t);
}

static void test_free_while_armed(void **state)
{
    struct probe *p = *state;
    struct precise_timer *t = precise_timer_new(p->base, on_fire, p);
    precise_timer_arm(t, 1000);
    precise_timer_free(t);
    precise_timer_free(NULL);
    run_for_ms(p, 20);
    assert_int_equal(p->fired, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_fires_once_after_its_time, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rearming_replaces_the_time, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_holds_even_after_expiry, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_while_armed, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
