/* sql_session.h - what one SQL statement may leave on its session.
 *
 * The pool's connections are shared by every sql job, each job's statement
 * in its own implicit transaction. Session state outlives that transaction:
 * an open transaction (BEGIN), settings (SET, set_config()), LISTEN, temporary
 * tables, cursors, SQL-level prepared statements, session advisory locks. The
 * pool must know before sending a statement whether it may leave any, to run
 * it where that can be checked and undone (pgpool.c), without a round trip
 * for the plain SELECT/INSERT/UPDATE/DELETE of the hot path.
 */
#ifndef JOBD_SQL_SESSION_H
#define JOBD_SQL_SESSION_H

enum {
    /* May take a session-level advisory lock (pg_advisory_lock() and
     * friends; the _xact_ ones end with the transaction). */
    SQL_SESSION_LOCK = 1,
    /* May leave anything else: a transaction, settings, LISTEN, temporary
     * tables... */
    SQL_SESSION_STATE = 2,
    SQL_SESSION_ANY = SQL_SESSION_LOCK | SQL_SESSION_STATE,
};

/* SQL_SESSION_* flags SQL's text may set, judged from its first keyword
 * (comments, blanks and opening parentheses skipped) and the functions it
 * names. A guess from the text, kept on the safe side: a function the
 * statement calls may do more than its text says. */
unsigned sql_session_effects(const char *sql);

#endif
