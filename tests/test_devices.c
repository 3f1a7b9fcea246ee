/*
 * test_devices.c - `worker --devices` (common/serve/devices.h): the core
 * and device lists, and the supervisor itself with this test binary as its
 * "worker" (devices_supervise execs /proc/self/exe "worker" ...; main()
 * below answers that as a stand-in child): the children's command lines
 * and environment, a restart after a crash, the drain on the stop flag,
 * also when it comes before the children could install their handlers.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#include "serve/devices.h"
#include "util/util.h"

static void test_parse_cpus(void **state)
{
    (void)state;
    cpu_set_t set;
    int n = -1;
    assert_int_equal(devices_parse_cpus("0", &set, &n), 0);
    assert_int_equal(n, 1);
    assert_true(CPU_ISSET(0, &set));
    assert_int_equal(devices_parse_cpus("0-3", &set, &n), 0);
    assert_int_equal(n, 4);
    assert_true(CPU_ISSET(3, &set) && !CPU_ISSET(4, &set));
    assert_int_equal(devices_parse_cpus("0,2,5-6", &set, &n), 0);
    assert_int_equal(n, 4);
    assert_true(CPU_ISSET(2, &set) && CPU_ISSET(6, &set) && !CPU_ISSET(1, &set));
    assert_int_equal(devices_parse_cpus("1-2,2-3,1", &set, &n), 0);   /* overlaps count once */
    assert_int_equal(n, 3);
    const char *bad[] = {"", "a", "-1", "3-1", "1-", "1,", ",1", "1;2", "1-2-3", "99999", "0-99999", " 1"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (devices_parse_cpus(bad[i], &set, &n) != -1)
            fail_msg("'%s' accepted", bad[i]);
}

static void test_parse_devices(void **state)
{
    (void)state;
    device_child ch[DEVICES_MAX];
    int n = -1;
    assert_int_equal(devices_parse("cpu:0-1+4-5,cuda:3,cpu:7", ch, &n), 0);
    assert_int_equal(n, 3);
    assert_string_equal(ch[0].name, "cpu:0-1+4-5");
    assert_string_equal(ch[0].pin, "0-1,4-5");   /* "+" joins core ranges of one device */
    assert_string_equal(ch[0].cuda, "");
    assert_string_equal(ch[1].name, "cuda:3");
    assert_string_equal(ch[1].cuda, "3");
    assert_string_equal(ch[1].pin, "");
    assert_string_equal(ch[2].pin, "7");
    for (int i = 0; i < n; i++)
        assert_true(ch[i].backoff == 1 && ch[i].pid == 0);
    const char *bad[] = {"", ",", "gpu:0", "cpu:", "cpu:x", "cpu:3-1", "cuda:", "cuda:-1", "cuda:1025", "cuda:1x",
                         "cpu:0,,tpu:1", "cpu:0+", "cpu"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (devices_parse(bad[i], ch, &n) != -1)
            fail_msg("'%s' accepted", bad[i]);
    /* at most DEVICES_MAX devices */
    char many[2048] = "";
    for (int i = 0; i <= DEVICES_MAX; i++)
        snprintf(many + strlen(many), sizeof many - strlen(many), "%scuda:%d", i ? "," : "", i);
    assert_int_equal(devices_parse(many, ch, &n), -1);
    many[strlen(many) - strlen(",cuda:64")] = '\0';
    assert_int_equal(devices_parse(many, ch, &n), 0);
    assert_int_equal(n, DEVICES_MAX);
}

/* ---- the supervisor, with this binary as the worker ---- */

static char g_dir[64];
static volatile sig_atomic_t g_stop;

static void on_alarm(int sig)
{
    (void)sig;
    g_stop = 1;
}

/* The stand-in worker: writes its argv (one per line) and
 * CUDA_VISIBLE_DEVICES to DIR/<consumer>.<n> (n: its start, 1 up); the
 * first start of a consumer ending in "crash" exits 3; otherwise it waits
 * for SIGTERM and exits 0. */
static int fake_worker(int argc, char **argv)
{
    const char *dir = getenv("DEVICES_TEST_DIR"), *consumer = "none";
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigprocmask(SIG_BLOCK, &set, NULL);   /* first: a SIGTERM while starting waits for sigwait */
    for (int i = 0; i + 1 < argc; i++)
        if (!strcmp(argv[i], "--consumer"))
            consumer = argv[i + 1];
    char path[256];
    int start = 1;
    for (;; start++) {
        snprintf(path, sizeof path, "%s/%s.%d", dir, consumer, start);
        if (access(path, F_OK) != 0)
            break;
    }
    FILE *f = fopen(path, "w");
    if (!f)
        return 9;
    for (int i = 0; i < argc; i++)
        fprintf(f, "%s\n", argv[i]);
    const char *cv = getenv("CUDA_VISIBLE_DEVICES");
    fprintf(f, "CUDA_VISIBLE_DEVICES=%s\n", cv ? cv : "");
    fclose(f);
    size_t cl = strlen(consumer);
    if (start == 1 && cl >= 5 && !strcmp(consumer + cl - 5, "crash"))
        return 3;
    int sig;
    sigwait(&set, &sig);
    return 0;
}

static char *read_text(const char *path)
{
    size_t len;
    char err[256];
    char *t = util_read_file(path, &len, err, sizeof err);
    if (!t)
        fail_msg("%s", err);
    return t;
}

static void test_supervise(void **state)
{
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/selfspec-devices-XXXXXX");
    assert_non_null(mkdtemp(g_dir));
    setenv("DEVICES_TEST_DIR", g_dir, 1);
    device_child ch[DEVICES_MAX];
    int n = 0;
    assert_int_equal(devices_parse("cpu:0+1,cuda:2", ch, &n), 0);
    char *argv[] = {"worker", "--redis", "redis://x", "--devices", "cpu:0+1,cuda:2", "--consumer", "old",
                    "--metrics-port=7", "--pin-cpus", "5", "-q", NULL};
    devices_opts o = {.consumer_base = "base", .metrics_port = 9000, .argc = 11, .argv = argv, .quiet = 1};
    /* the stop flag comes from a timer, as from a signal */
    struct sigaction sa = {0};
    sa.sa_handler = on_alarm;
    sigaction(SIGALRM, &sa, NULL);
    struct itimerval it = {.it_value = {.tv_sec = 1, .tv_usec = 500000}};
    g_stop = 0;
    setitimer(ITIMER_REAL, &it, NULL);
    double t0 = util_now();
    assert_int_equal(devices_supervise(ch, n, &o, &g_stop), 0);
    assert_true(util_now() - t0 < 10);
    for (int i = 0; i < n; i++)
        assert_int_equal(ch[i].pid, 0);
    char path[256];
    snprintf(path, sizeof path, "%s/base-cpu-0+1.1", g_dir);
    char *a = read_text(path);
    assert_string_equal(a, "selfspec\nworker\n--redis\nredis://x\n-q\n--consumer\nbase-cpu-0+1\n--pin-cpus\n0,1\n"
                           "--metrics-port\n9000\nCUDA_VISIBLE_DEVICES=\n");
    free(a);
    snprintf(path, sizeof path, "%s/base-cuda-2.1", g_dir);
    a = read_text(path);
    assert_string_equal(a, "selfspec\nworker\n--redis\nredis://x\n-q\n--consumer\nbase-cuda-2\n--metrics-port\n9001\n"
                           "--device\ncuda:0\nCUDA_VISIBLE_DEVICES=2\n");
    free(a);
    snprintf(path, sizeof path, "%s/base-cuda-2.2", g_dir);
    assert_int_equal(access(path, F_OK), -1);   /* never restarted: it did not die */

    /* a child that crashes is restarted after its backoff (1 s) and both
     * drain with 0 */
    assert_int_equal(devices_parse("cpu:0", ch, &n), 0);
    char *argv2[] = {"worker", "--redis", "redis://x", NULL};
    devices_opts o2 = {.consumer_base = "crash", .argc = 3, .argv = argv2, .quiet = 1};
    /* consumer "crash-cpu-0" does not end in "crash": name the device so */
    snprintf(ch[0].name, sizeof ch[0].name, "crash");
    g_stop = 0;
    it.it_value.tv_sec = 2;   /* the restart comes at about 1 s */
    setitimer(ITIMER_REAL, &it, NULL);
    assert_int_equal(devices_supervise(ch, n, &o2, &g_stop), 0);
    snprintf(path, sizeof path, "%s/crash-crash.2", g_dir);
    assert_int_equal(access(path, F_OK), 0);
    assert_true(ch[0].backoff == 2);   /* doubled after the crash */
    /* a stop before the children have their handlers: they start with
     * SIGTERM blocked, so each still drains and exits 0 (none dies by it) */
    assert_int_equal(devices_parse("cpu:0,cpu:1,cpu:2,cpu:3", ch, &n), 0);
    devices_opts o3 = {.consumer_base = "early", .argc = 3, .argv = argv2, .quiet = 1};
    for (int round = 0; round < 3; round++) {
        g_stop = 1;
        assert_int_equal(devices_supervise(ch, n, &o3, &g_stop), 0);
    }
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", g_dir);
    assert_int_equal(system(cmd), 0);
}

int main(int argc, char **argv)
{
    if (argc > 1 && !strcmp(argv[1], "worker"))
        return fake_worker(argc, argv);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_cpus),
        cmocka_unit_test(test_parse_devices),
        cmocka_unit_test(test_supervise),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
