/* test_sql_session.c - which statements the pool must watch for what they
 * leave on the session: the hot path's plain statements must not be flagged
 * (a flagged one gives up pipelining, or gets a statement sent after it),
 * and the ones that leave a transaction, a setting, a temporary table or an
 * advisory lock must be, whatever the case, comments and blanks before
 * them. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cmocka.h>

#include "sql_session.h"

struct judged {
    const char *sql;
    unsigned want;
};

static void check(const struct judged *cases, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned got = sql_session_effects(cases[i].sql);
        if (got != cases[i].want)
            fail_msg("\"%s\": got %u, want %u", cases[i].sql, got, cases[i].want);
    }
}

#define CHECK(cases) check(cases, sizeof(cases) / sizeof(cases[0]))

static void plain_statements_are_not_flagged(void **state)
{
    (void)state;
    static const struct judged cases[] = {
        {"SELECT 1", 0},
        {"INSERT INTO items(name) VALUES ($1) RETURNING id", 0},
        {"update t set x = 1", 0},
        {"DELETE FROM t WHERE begin_at < now()", 0},
        {"WITH s AS (SELECT 1) SELECT * FROM s", 0},
        {"CREATE TABLE temperature (x int)", 0},
        {"INSERT INTO temperature (x) VALUES (1)", 0},
        {"CREATE OR REPLACE VIEW v AS SELECT 1 AS temp", 0},
        {"CREATE TABLE t (x int)", 0},
        {"SELECT settings, resetting FROM t", 0},
        {"SELECT pg_advisory_xact_lock($1)", 0},
        {"BEGINNING", 0},
        {"", 0},
        {"/* unterminated", 0},
    };
    CHECK(cases);
}

static void transactions_settings_and_temporary_tables_are_state(void **state)
{
    (void)state;
    static const struct judged cases[] = {
        {"BEGIN", SQL_SESSION_STATE},
        {"begin;", SQL_SESSION_STATE},
        {"  START TRANSACTION", SQL_SESSION_STATE},
        {"-- note\n/* a /* nested */ one */ BEGIN", SQL_SESSION_STATE},
        {"SET search_path = x", SQL_SESSION_STATE},
        {"reset all", SQL_SESSION_STATE},
        {"LISTEN ch", SQL_SESSION_STATE},
        {"PREPARE p AS SELECT 1", SQL_SESSION_STATE},
        {"DEALLOCATE ALL", SQL_SESSION_STATE},
        {"DECLARE c CURSOR WITH HOLD FOR SELECT 1", SQL_SESSION_STATE},
        {"DISCARD ALL", SQL_SESSION_STATE},
        {"SELECT set_config('search_path', $1, false)", SQL_SESSION_STATE},
        {"(SELECT SET_CONFIG('a.b', '1', false))", SQL_SESSION_STATE},
        {"CREATE TEMP TABLE t (x int)", SQL_SESSION_STATE},
        {"create temporary table t as select 1", SQL_SESSION_STATE},
        {"CREATE LOCAL TEMP TABLE t (x int)", SQL_SESSION_STATE},
        {"CREATE /* c */ GLOBAL\tTEMPORARY TABLE t (x int)", SQL_SESSION_STATE},
        /* Temporary tables and views made the other ways PostgreSQL has:
         * a second run on the same session failed "already exists". */
        {"SELECT * INTO TEMP t FROM items", SQL_SESSION_STATE},
        {"select x into temporary table t from items", SQL_SESSION_STATE},
        {"CREATE OR REPLACE TEMP VIEW v AS SELECT 1", SQL_SESSION_STATE},
        {"CREATE TABLE pg_temp.t (x int)", SQL_SESSION_STATE},
    };
    CHECK(cases);
}

static void advisory_locks_and_code(void **state)
{
    (void)state;
    static const struct judged cases[] = {
        {"SELECT pg_advisory_lock($1)", SQL_SESSION_LOCK},
        {"SELECT PG_TRY_ADVISORY_LOCK(1, 2)", SQL_SESSION_LOCK},
        {"SELECT pg_advisory_lock_shared(7)", SQL_SESSION_LOCK},
        {"DO $$BEGIN PERFORM 1; END$$", SQL_SESSION_ANY},
        {"CALL p()", SQL_SESSION_ANY},
        {"SELECT set_config('a.b', '1', false), pg_advisory_lock(1)", SQL_SESSION_ANY},
    };
    CHECK(cases);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(plain_statements_are_not_flagged),
        cmocka_unit_test(transactions_settings_and_temporary_tables_are_state),
        cmocka_unit_test(advisory_locks_and_code),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
