/* timer.h - libevent timers in milliseconds, the unit every setting uses. */
#ifndef JOBD_TIMER_H
#define JOBD_TIMER_H

#include <event2/event.h>
#include <stdint.h>

/* (Re)arm a timer event to fire in MS milliseconds. Returns evtimer_add's. */
int timer_add_ms(struct event *ev, int64_t ms);

/* A timer that fires every MS milliseconds until freed; NULL on failure. */
struct event *timer_new_periodic(struct event_base *base, int64_t ms, event_callback_fn cb,
                                 void *arg);

#endif
