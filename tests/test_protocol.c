/*
 * test_protocol.c - unit tests for common/ipc/protocol.c, the pipeline
 * protocol without processes or sockets: crafted envelopes from a wrong
 * session, an old incarnation, replayed message numbers, the wrong state,
 * stale epochs, malformed blocks (sequence, size, tokens) are rejected and
 * counted by kind; good blocks land in their slots; requests open epochs;
 * the drafter's request check; a request survives the wire (pack/unpack).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <string.h>

#include "ipc/protocol.h"

#define SESSION 0x1234567890abcdefull
#define VOCAB 100
#define PID 4242

/* A message from the drafter as the verifier would unpack it. */
typedef struct {
    Selfspec__Envelope e;
    Selfspec__Hello hello;
    Selfspec__HelloAck ack;
    Selfspec__DraftBlock block;
    Selfspec__Heartbeat hb;
    Selfspec__Counters c;
    Selfspec__DraftRequest req;
    int32_t toks[SPEC_MAX_DRAFT + 2];
    float probs[SPEC_MAX_DRAFT + 2];
} msg;

static void env(msg *m, uint64_t session, uint32_t inc, uint64_t no, uint32_t seq, uint64_t epoch)
{
    memset(m, 0, sizeof *m);
    selfspec__envelope__init(&m->e);
    m->e.version = PIPE_VERSION;
    m->e.session = session;
    m->e.incarnation = inc;
    m->e.msg_no = no;
    m->e.seq_id = seq;
    m->e.epoch = epoch;
}

static Selfspec__Envelope *hello(msg *m, uint32_t inc, uint64_t no, uint32_t pid)
{
    env(m, SESSION, inc, no, 0, 0);
    selfspec__hello__init(&m->hello);
    m->hello.role = 1;
    m->hello.pid = pid;
    m->e.body_case = SELFSPEC__ENVELOPE__BODY_HELLO;
    m->e.hello = &m->hello;
    return &m->e;
}

static Selfspec__Envelope *ack(msg *m, uint32_t inc, uint64_t no, int ok)
{
    env(m, SESSION, inc, no, 0, 0);
    selfspec__hello_ack__init(&m->ack);
    m->ack.ok = ok;
    m->ack.error = ok ? "" : "no";
    m->e.body_case = SELFSPEC__ENVELOPE__BODY_HELLO_ACK;
    m->e.hello_ack = &m->ack;
    return &m->e;
}

static Selfspec__Envelope *block(msg *m, uint32_t inc, uint64_t no, uint32_t seq, uint64_t epoch, int32_t pos,
                                 int32_t cur, int n, int32_t first, int speculative)
{
    env(m, SESSION, inc, no, seq, epoch);
    selfspec__draft_block__init(&m->block);
    for (int i = 0; i < n; i++) {
        m->toks[i] = first + i;
        m->probs[i] = 0.5f;
    }
    m->block.pos = pos;
    m->block.cur = cur;
    m->block.n_tokens = (size_t)n;
    m->block.tokens = m->toks;
    m->block.n_probs = (size_t)n;
    m->block.probs = m->probs;
    m->block.speculative = speculative;
    m->block.draft_seconds = 0.25;
    m->e.body_case = SELFSPEC__ENVELOPE__BODY_BLOCK;
    m->e.block = &m->block;
    return &m->e;
}

static Selfspec__Envelope *heartbeat(msg *m, uint32_t inc, uint64_t no, uint64_t stale)
{
    env(m, SESSION, inc, no, 0, 0);
    selfspec__heartbeat__init(&m->hb);
    selfspec__counters__init(&m->c);
    m->c.stale = stale;
    m->c.malformed = 1;
    m->hb.counters = &m->c;
    m->e.body_case = SELFSPEC__ENVELOPE__BODY_HEARTBEAT;
    m->e.heartbeat = &m->hb;
    return &m->e;
}

/* A link with incarnation `inc` set up and READY; next message number *no. */
static void ready(proto_link *L, int n_seqs, uint32_t inc, uint64_t *no)
{
    msg m;
    proto_init(L, SESSION, n_seqs, VOCAB);
    proto_start(L, inc, PID);
    *no = 1;
    assert_int_equal(proto_receive(L, hello(&m, inc, (*no)++, PID)), PROTO_HELLO);
    assert_int_equal(L->state, PROTO_SETUP);
    assert_int_equal(proto_receive(L, ack(&m, inc, (*no)++, 1)), PROTO_ACK_OK);
    assert_int_equal(L->state, PROTO_READY);
}

static uint64_t total(const pipe_counters *c)
{
    return c->malformed + c->foreign + c->replayed + c->stale + c->unexpected;
}

static uint64_t request(proto_link *L, uint32_t seq, int32_t pos, int32_t cur)
{
    Selfspec__Envelope e;
    Selfspec__DraftRequest r;
    proto_request(L, &e, &r, seq, SELFSPEC__REQUEST_KIND__REQUEST_FRESH, pos, cur, 8, 60, 0.5f);
    return e.epoch;
}

/* ---------------------------------------------------------------- start-up */

static void test_startup(void **state)
{
    (void)state;
    proto_link L;
    msg m;
    proto_init(&L, SESSION, 1, VOCAB);
    /* no drafter yet: anything is stale */
    assert_int_equal(proto_receive(&L, hello(&m, 0, 1, PID)), PROTO_REJECTED);
    assert_int_equal(L.rx.stale, 1);
    proto_start(&L, 1, PID);
    /* a hello from another pid: heard, but unexpected */
    assert_int_equal(proto_receive(&L, hello(&m, 1, 1, PID + 1)), PROTO_HEARD);
    assert_int_equal(L.rx.unexpected, 1);
    /* an ack before the hello: unexpected */
    assert_int_equal(proto_receive(&L, ack(&m, 1, 2, 1)), PROTO_HEARD);
    assert_int_equal(L.rx.unexpected, 2);
    assert_int_equal(L.state, PROTO_STARTING);
    assert_int_equal(proto_receive(&L, hello(&m, 1, 3, PID)), PROTO_HELLO);
    assert_int_equal(L.state, PROTO_SETUP);
    /* a second hello: unexpected */
    assert_int_equal(proto_receive(&L, hello(&m, 1, 4, PID)), PROTO_HEARD);
    assert_int_equal(L.rx.unexpected, 3);
    /* a block before READY: malformed */
    assert_int_equal(proto_receive(&L, block(&m, 1, 5, 0, 0, 5, 1, 2, 3, 0)), PROTO_REJECTED);
    assert_int_equal(L.rx.malformed, 1);
    assert_int_equal(proto_receive(&L, ack(&m, 1, 6, 0)), PROTO_ACK_FAILED);
    assert_int_equal(L.state, PROTO_SETUP);   /* the supervisor decides */
    assert_int_equal(proto_receive(&L, ack(&m, 1, 7, 1)), PROTO_ACK_OK);
    assert_int_equal(L.state, PROTO_READY);
    assert_int_equal(total(&L.rx), 5);
}

/* ---------------------------------------------------------- envelope checks */

static void test_foreign_and_replayed(void **state)
{
    (void)state;
    proto_link L;
    msg m;
    uint64_t no;
    ready(&L, 1, 3, &no);
    uint64_t ep = request(&L, 0, 5, 1);
    /* wrong session */
    block(&m, 3, no++, 0, ep, 5, 1, 2, 10, 0);
    m.e.session = SESSION ^ 1;
    assert_int_equal(proto_receive(&L, &m.e), PROTO_REJECTED);
    /* an old incarnation, and a future one */
    assert_int_equal(proto_receive(&L, block(&m, 2, no++, 0, ep, 5, 1, 2, 10, 0)), PROTO_REJECTED);
    assert_int_equal(proto_receive(&L, block(&m, 4, no++, 0, ep, 5, 1, 2, 10, 0)), PROTO_REJECTED);
    /* wrong version */
    block(&m, 3, no++, 0, ep, 5, 1, 2, 10, 0);
    m.e.version = PIPE_VERSION + 1;
    assert_int_equal(proto_receive(&L, &m.e), PROTO_REJECTED);
    assert_int_equal(L.rx.foreign, 4);
    assert_false(L.fresh[0].have);
    /* accepted, then the same message number again: replayed */
    assert_int_equal(proto_receive(&L, block(&m, 3, 100, 0, ep, 5, 1, 2, 10, 0)), PROTO_BLOCK);
    assert_int_equal(proto_receive(&L, block(&m, 3, 100, 0, ep, 5, 1, 2, 10, 0)), PROTO_REJECTED);
    assert_int_equal(proto_receive(&L, block(&m, 3, 99, 0, ep, 5, 1, 2, 10, 0)), PROTO_REJECTED);
    assert_int_equal(L.rx.replayed, 2);
    /* heartbeats are their own stream: a small number still passes */
    assert_int_equal(proto_receive(&L, heartbeat(&m, 3, 1, 7)), PROTO_HEARD);
    assert_int_equal(proto_receive(&L, heartbeat(&m, 3, 1, 7)), PROTO_REJECTED);
    assert_int_equal(L.rx.replayed, 3);
    /* a body the verifier never receives */
    env(&m, SESSION, 3, 200, 0, ep);
    selfspec__draft_request__init(&m.req);
    m.e.body_case = SELFSPEC__ENVELOPE__BODY_REQUEST;
    m.e.request = &m.req;
    assert_int_equal(proto_receive(&L, &m.e), PROTO_REJECTED);
    assert_int_equal(L.rx.unexpected, 1);
    assert_int_equal(total(&L.rx), 8);
}

/* ---------------------------------------------------------------- blocks */

static void test_blocks(void **state)
{
    (void)state;
    proto_link L;
    msg m;
    uint64_t no;
    ready(&L, 1, 1, &no);
    /* epoch 0, before any request: stale */
    assert_int_equal(proto_receive(&L, block(&m, 1, no++, 0, 7, 5, 1, 2, 10, 0)), PROTO_HEARD);
    assert_int_equal(L.rx.stale, 1);
    uint64_t e1 = request(&L, 0, 5, 1);
    assert_int_equal(L.req_inc[0], 1);
    assert_int_equal(L.seq_epoch[0], e1);
    /* malformed: token out of range (both ends), too long, bad sequence, probs count */
    block(&m, 1, no++, 0, e1, 5, 1, 3, 10, 0);
    m.toks[1] = VOCAB;
    assert_int_equal(proto_receive(&L, &m.e), PROTO_REJECTED);
    block(&m, 1, no++, 0, e1, 5, 1, 3, 10, 0);
    m.toks[2] = -1;
    assert_int_equal(proto_receive(&L, &m.e), PROTO_REJECTED);
    assert_int_equal(proto_receive(&L, block(&m, 1, no++, 0, e1, 5, 1, SPEC_MAX_DRAFT + 1, 0, 0)), PROTO_REJECTED);
    assert_int_equal(proto_receive(&L, block(&m, 1, no++, 1, e1, 5, 1, 2, 10, 0)), PROTO_REJECTED);
    block(&m, 1, no++, 0, e1, 5, 1, 3, 10, 0);
    m.block.n_probs = 2;
    assert_int_equal(proto_receive(&L, &m.e), PROTO_REJECTED);
    assert_int_equal(L.rx.malformed, 5);
    assert_false(proto_has_block(&L, &L.fresh[0], 0));
    /* the longest block, no probs: fine */
    assert_int_equal(proto_receive(&L, block(&m, 1, no++, 0, e1, 5, 1, SPEC_MAX_DRAFT, 0, 0)), PROTO_BLOCK);
    assert_int_equal(L.fresh[0].n, SPEC_MAX_DRAFT);
    uint64_t e2 = request(&L, 0, 5, 1);
    assert_true(e2 > e1);
    assert_false(L.fresh[0].have);   /* a new request drops the old answer */
    /* the old epoch's block arrives late: stale, slot untouched */
    assert_int_equal(proto_receive(&L, block(&m, 1, no++, 0, e1, 5, 1, 2, 10, 0)), PROTO_HEARD);
    assert_int_equal(L.rx.stale, 2);
    assert_false(L.fresh[0].have);
    /* the answer, then its speculative follower */
    block(&m, 1, no++, 0, e2, 5, 1, 3, 10, 0);
    m.block.n_probs = 0;
    assert_int_equal(proto_receive(&L, &m.e), PROTO_BLOCK);
    assert_int_equal(proto_receive(&L, block(&m, 1, no++, 0, e2, 9, 13, 2, 20, 1)), PROTO_BLOCK);
    assert_true(proto_has_block(&L, &L.fresh[0], 0));
    assert_true(proto_has_block(&L, &L.spec, 0));
    assert_int_equal(L.fresh[0].pos, 5);
    assert_int_equal(L.fresh[0].cur, 1);
    assert_int_equal(L.fresh[0].n, 3);
    assert_int_equal(L.fresh[0].toks[2], 12);
    assert_int_equal(L.spec.pos, 9);
    assert_int_equal(L.spec.toks[1], 21);
    assert_int_equal(L.blocks, 3);
    assert_true(L.drafter_seconds > 0.74 && L.drafter_seconds < 0.76);
    /* the drafter dies: blocks dropped, then everything from it is stale */
    proto_lost(&L);
    assert_int_equal(L.state, PROTO_NONE);
    assert_false(L.fresh[0].have);
    assert_false(L.spec.have);
    assert_int_equal(proto_receive(&L, block(&m, 1, no++, 0, e2, 5, 1, 2, 10, 0)), PROTO_REJECTED);
    assert_int_equal(L.rx.stale, 3);
}

/* ------------------------------------------------------- several sequences */

static void test_sequences(void **state)
{
    (void)state;
    proto_link L;
    msg m;
    uint64_t no;
    ready(&L, 3, 1, &no);
    uint64_t e0 = request(&L, 0, 5, 1), e1 = request(&L, 1, 5, 1);
    assert_int_equal(L.epoch, e1);
    /* sequence 0's epoch on sequence 1: stale; each its own */
    assert_int_equal(proto_receive(&L, block(&m, 1, no++, 1, e0, 5, 1, 2, 10, 0)), PROTO_HEARD);
    assert_int_equal(L.rx.stale, 1);
    assert_int_equal(proto_receive(&L, block(&m, 1, no++, 0, e0, 5, 1, 2, 10, 0)), PROTO_BLOCK);
    assert_int_equal(proto_receive(&L, block(&m, 1, no++, 1, e1, 5, 1, 3, 30, 1)), PROTO_BLOCK);
    assert_true(proto_has_block(&L, &L.fresh[0], 0));
    assert_true(proto_has_block(&L, &L.fresh[1], 1));   /* several: no speculative slot */
    assert_false(L.spec.have);
    assert_false(proto_has_block(&L, &L.fresh[2], 2));
    assert_int_equal(proto_receive(&L, block(&m, 1, no++, 3, e1, 5, 1, 2, 10, 0)), PROTO_REJECTED);
    assert_int_equal(L.rx.malformed, 1);
    /* several sequences: received blocks outlive the drafter */
    proto_lost(&L);
    assert_true(proto_has_block(&L, &L.fresh[1], 1));
    /* a new incarnation: numbering starts again; the old one is foreign */
    proto_start(&L, 2, PID + 1);
    assert_int_equal(proto_receive(&L, hello(&m, 1, 1000, PID)), PROTO_REJECTED);
    assert_int_equal(L.rx.foreign, 1);
    assert_int_equal(proto_receive(&L, hello(&m, 2, 1, PID + 1)), PROTO_HELLO);
    assert_int_equal(L.req_inc[1], 1);   /* still the old incarnation's request */
}

/* ------------------------------------------------- drafter's counters */

static void test_drafter_counters(void **state)
{
    (void)state;
    proto_link L;
    msg m;
    uint64_t no;
    pipe_counters c;
    ready(&L, 1, 1, &no);
    assert_int_equal(proto_receive(&L, heartbeat(&m, 1, 1, 4)), PROTO_HEARD);
    assert_int_equal(proto_receive(&L, heartbeat(&m, 1, 2, 6)), PROTO_HEARD);   /* a report, not a delta */
    proto_drafter_rx(&L, &c);
    assert_int_equal(c.stale, 6);
    assert_int_equal(c.malformed, 1);
    proto_lost(&L);
    proto_start(&L, 2, PID);
    assert_int_equal(proto_receive(&L, heartbeat(&m, 2, 1, 3)), PROTO_HEARD);
    proto_drafter_rx(&L, &c);
    assert_int_equal(c.stale, 9);
    assert_int_equal(c.malformed, 2);
    assert_int_equal(total(&L.rx), 0);
}

/* ------------------------------------------------------------- requests */

static void test_request_wire(void **state)
{
    (void)state;
    proto_link L;
    uint64_t no;
    ready(&L, 1, 5, &no);
    Selfspec__Envelope e;
    Selfspec__DraftRequest r;
    uint64_t tx = L.tx_no;
    proto_request(&L, &e, &r, 0, SELFSPEC__REQUEST_KIND__REQUEST_CONTINUE, 17, 42, 6, 40, 0.625f);
    assert_int_equal(e.msg_no, tx + 1);
    assert_int_equal(e.incarnation, 5);
    assert_true(e.session == SESSION);
    uint8_t buf[256];
    size_t n = selfspec__envelope__get_packed_size(&e);
    assert_true(n <= sizeof buf);
    selfspec__envelope__pack(&e, buf);
    Selfspec__Envelope *u = selfspec__envelope__unpack(NULL, n, buf);
    assert_non_null(u);
    assert_int_equal(u->body_case, SELFSPEC__ENVELOPE__BODY_REQUEST);
    assert_int_equal(u->epoch, L.epoch);
    assert_int_equal(u->request->kind, SELFSPEC__REQUEST_KIND__REQUEST_CONTINUE);
    assert_int_equal(u->request->pos, 17);
    assert_int_equal(u->request->cur, 42);
    assert_int_equal(u->request->k_max, 6);
    assert_int_equal(u->request->end_pos, 40);
    assert_true(u->request->gamma == 0.625f);
    assert_true(proto_request_valid(u->request, u->seq_id, 1, 64, VOCAB, 8));
    selfspec__envelope__free_unpacked(u, NULL);
}

static void test_request_valid(void **state)
{
    (void)state;
    Selfspec__DraftRequest r = SELFSPEC__DRAFT_REQUEST__INIT;
    const int32_t cap = 64, K = 8;
#define OK(seq) proto_request_valid(&r, (seq), 2, cap, VOCAB, K)
#define RESET() (r.kind = SELFSPEC__REQUEST_KIND__REQUEST_FRESH, r.pos = 5, r.cur = 1, r.k_max = K, \
                 r.end_pos = cap - 2, r.gamma = 0.5f)
    RESET();
    assert_true(OK(0));
    assert_true(OK(1));
    assert_false(OK(2));
    r.kind = SELFSPEC__REQUEST_KIND__REQUEST_KIND_NONE;   assert_false(OK(0));
    r.kind = (Selfspec__RequestKind)3;                     assert_false(OK(0));
    r.kind = SELFSPEC__REQUEST_KIND__REQUEST_CONTINUE;     assert_true(OK(0));
    RESET(); r.pos = 0;              assert_false(OK(0));
    RESET(); r.pos = cap - 2;        assert_true(OK(0));
    RESET(); r.pos = cap - 1;        assert_false(OK(0));
    RESET(); r.cur = -1;             assert_false(OK(0));
    RESET(); r.cur = VOCAB;          assert_false(OK(0));
    RESET(); r.k_max = -1;           assert_false(OK(0));
    RESET(); r.k_max = 0;            assert_true(OK(0));
    RESET(); r.k_max = K + 1;        assert_false(OK(0));
    RESET(); r.end_pos = cap - 1;    assert_false(OK(0));
    RESET(); r.gamma = -0.01f;       assert_false(OK(0));
    RESET(); r.gamma = 1.5f;         assert_false(OK(0));
    RESET(); r.gamma = NAN;          assert_false(OK(0));
#undef OK
#undef RESET
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_startup),
        cmocka_unit_test(test_foreign_and_replayed),
        cmocka_unit_test(test_blocks),
        cmocka_unit_test(test_sequences),
        cmocka_unit_test(test_drafter_counters),
        cmocka_unit_test(test_request_wire),
        cmocka_unit_test(test_request_valid),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
