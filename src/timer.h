/* timer.h - libevent timers in milliseconds, the unit every setting uses. */
#ifndef JOBD_TIMER_H
#define JOBD_TIMER_H

#include <event2/event.h>
#include <stdbool.h>
#include <stdint.h>

/* (Re)arm a timer event to fire in MS milliseconds. Returns evtimer_add's. */
int timer_add_ms(struct event *ev, int64_t ms);

/* A timer that fires every MS milliseconds until freed; NULL on failure. */
struct event *timer_new_periodic(struct event_base *base, int64_t ms, event_callback_fn cb,
                                 void *arg);

/* Timers that must not end early (a job's timeout, a sleep). libevent
 * measures time with the coarse monotonic clock, cached per loop pass, so a
 * plain timer may fire a few milliseconds before its time; the precise-timer
 * flag would fix that at the cost of a timerfd syscall on every loop pass.
 * Instead: a deadline on the precise monotonic clock (microseconds), and the
 * callback asks timer_early() first. */
/* The precise monotonic clock, in microseconds. */
int64_t mono_us(void);
int64_t timer_deadline(int64_t ms);
int timer_add_until(struct event *ev, int64_t deadline);
/* In the callback: true, and the timer re-armed, when it fired early. */
bool timer_early(struct event *ev, int64_t deadline);

/* A one-shot timer precise to tens of microseconds, for pauses shorter than
 * the coarse clock's tick (4 ms at HZ=250): its own timerfd, so arming it is
 * one syscall and other timers keep the cheap clock. */
struct precise_timer;
struct precise_timer *precise_timer_new(struct event_base *base, void (*cb)(void *), void *arg);
void precise_timer_free(struct precise_timer *t);
/* Fire once in US microseconds (re-arming replaces the previous time). */
int precise_timer_arm(struct precise_timer *t, int64_t us);
void precise_timer_cancel(struct precise_timer *t);
bool precise_timer_pending(const struct precise_timer *t);

#endif
