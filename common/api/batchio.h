/*
 * batchio.h - the I/O of `selfspec batch`: the OpenAI batch file format as
 * vLLM's run-batch reads and writes it (one JSON object per line).
 *
 *  - batch_parse_line: one input line -> a validated batch_request
 *    ({"custom_id", "method": "POST", "url": "/v1/completions" |
 *    "/v1/chat/completions", "body": {...}}).
 *  - batch_idset_*: a hash set of custom_id strings (duplicate detection,
 *    and the requests already done when a job is resumed).
 *  - batch_format_result / batch_format_error: one output line each,
 *    byte-deterministic in their arguments (no clock, no randomness: ids are
 *    hashes of the custom_id), so a job killed and resumed writes the same
 *    bytes as an uninterrupted one.
 *  - batch_scan_output / batch_scan_buffer: resume support; the custom_ids
 *    of the complete lines of an existing output file and the byte length
 *    of its valid prefix (a torn last line is cut off and redone).
 *
 * Every string read is checked to be valid UTF-8 without NUL; every number
 * is range-checked; known body fields of the wrong type or out of range are
 * errors, unknown fields are ignored (as OpenAI-compatible servers do), and
 * null means "not given" for every optional field. Nothing here holds
 * global mutable state. cJSON parses numbers with the C locale's decimal
 * point: the process must not setlocale(LC_NUMERIC) to another one.
 */
#ifndef SELFSPEC_BATCHIO_H
#define SELFSPEC_BATCHIO_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Longest input line, in bytes, not counting its '\n' (and '\r'). */
#define BATCH_MAX_LINE (1u << 20)
/* Longest output line batch_format_* produces and batch_scan_* accepts. */
#define BATCH_MAX_OUTPUT_LINE (64u << 20)
/* Most stop strings per request (OpenAI's limit is 4; vLLM has none). */
#define BATCH_MAX_STOP 8
/* max_tokens when the body gives neither max_tokens nor
 * max_completion_tokens: OpenAI's default for /v1/completions, and ours for
 * chat (vLLM would use the rest of the context; 256 bounds a batch's cost). */
#define BATCH_DEFAULT_MAX_TOKENS_COMPLETION 16
#define BATCH_DEFAULT_MAX_TOKENS_CHAT 256
/* Defaults of the sampling fields (OpenAI's): temperature 1, top_p 1. */
#define BATCH_DEFAULT_TEMPERATURE 1.0
#define BATCH_DEFAULT_TOP_P 1.0
/* seed is an integer in [0, BATCH_MAX_SEED]: JSON numbers arrive as doubles,
 * and above 2^53 - 1 a seed would silently become another one. */
#define BATCH_MAX_SEED 9007199254740991.0

typedef enum {
    BATCH_COMPLETION = 0,     /* POST /v1/completions */
    BATCH_CHAT = 1,           /* POST /v1/chat/completions */
} batch_kind;

/* "response_format".type (decode/jschema.h says what a schema may hold;
 * the schema is compiled where the request is run: serve/job.c). */
typedef enum {
    BATCH_TEXT = 0,
    BATCH_JSON_OBJECT = 1,    /* any JSON object */
    BATCH_JSON_SCHEMA = 2,    /* a JSON value the schema accepts */
} batch_format;

typedef enum {
    BATCH_ROLE_SYSTEM = 0,
    BATCH_ROLE_USER = 1,
    BATCH_ROLE_ASSISTANT = 2,
} batch_role;

typedef struct {
    batch_role role;
    char *content;            /* a string, or text parts joined by "\n" */
} batch_message;

typedef enum {
    BATCH_FINISH_STOP = 0,    /* end of generation or a stop string */
    BATCH_FINISH_LENGTH = 1,  /* max_tokens (or the context) reached */
} batch_finish;

/* One parsed request. Every pointer is malloc'd and owned by the struct
 * (batch_request_free); strings are valid UTF-8 without NUL. */
typedef struct {
    char *custom_id;          /* NULL only when it could not be read */
    batch_kind kind;
    char *model;              /* body.model, NULL when absent (echo it) */
    char *prompt;             /* BATCH_COMPLETION: the prompt */
    batch_message *messages;  /* BATCH_CHAT: n_messages >= 1 of them */
    int n_messages;
    int max_tokens;           /* >= 1; the default when not given */
    int max_tokens_given;     /* 1 when the body set it */
    double temperature;       /* [0, 2]; 0 = greedy */
    double top_p;             /* (0, 1] */
    int top_k;                /* 0 = off (the body's -1 and 0), else >= 1 */
    int has_seed;
    uint64_t seed;            /* when has_seed: [0, 2^53 - 1] */
    char *stop[BATCH_MAX_STOP]; /* non-empty strings */
    int n_stop;
    int ignore_eos;           /* vLLM extension */
    int n;                    /* choices: 1..BATCH_MAX_N ("n") */
    int want_logprobs;        /* completions: "logprobs": N; chat: "logprobs": true */
    int top_logprobs;         /* completions: N; chat: "top_logprobs" (0..BATCH_MAX_TOP_LOGPROBS) */
    batch_format response_format;   /* "response_format": text, json_object, json_schema */
    char *json_schema;        /* BATCH_JSON_SCHEMA: json_schema.schema as compact JSON text */
    double presence_penalty;  /* [-2, 2] */
    double frequency_penalty; /* [-2, 2] */
    int min_tokens;           /* vLLM's: [0, max_tokens] */
    int32_t *bias_ids;        /* logit_bias: (n_bias) token ids (checked against the vocabulary later), */
    float *bias_vals;         /* their values in [-100, 100] */
    int n_bias;
} batch_request;

/* Most logit_bias entries (OpenAI's limit is 300). */
#define BATCH_MAX_LOGIT_BIAS 1024

/* The most choices one request may ask ("n"). */
#define BATCH_MAX_N 16

/* The most alternatives a request may ask per token (OpenAI's chat limit). */
#define BATCH_MAX_TOP_LOGPROBS 20

/* One emitted token's log-probabilities, as the response reports them. */
typedef struct {
    const char *text;         /* the token's bytes (its piece; may be a partial UTF-8 sequence) */
    size_t len;
    float logprob;
    size_t text_offset;       /* byte offset of the token in the text */
    int n_top;
    const char *top_text[BATCH_MAX_TOP_LOGPROBS];
    size_t top_len[BATCH_MAX_TOP_LOGPROBS];
    float top_lp[BATCH_MAX_TOP_LOGPROBS];
} batch_logprob;

/* Parse one input line (line[0..len), no NUL needed; a trailing "\n" or
 * "\r\n" is allowed) into *out, which is always (re)initialised first, so
 * batch_request_free(out) is right after any return.
 * Returns 0 when the line is a valid request; 1 when the line is empty or
 * only whitespace (skip it, as vLLM does); -1 when it is invalid, with a
 * one-line reason in err (e.g. "body.top_p must be in (0, 1], got 1.5").
 * On -1, out->custom_id is still set when the line is a JSON object whose
 * custom_id is a valid string (NULL otherwise), so the error line can carry
 * it; nothing else in *out is meaningful. Lines longer than BATCH_MAX_LINE,
 * containing a NUL byte, invalid UTF-8 or a \u0000 escape are invalid. */
int batch_parse_line(const char *line, size_t len, batch_request *out, char *err, size_t errlen);

/* Parse an OpenAI request body alone (what a batch line's "body" holds, as
 * an HTTP server receives it) for the endpoint `kind`, with the checks of
 * batch_parse_line, except that "stream": true is allowed and reported in
 * *stream. out->custom_id becomes a copy of custom_id (the caller's request
 * id). Returns 0, or -1 with the reason in err (out is then freed: only
 * batch_request_free(out) is meaningful). Bodies over BATCH_MAX_LINE bytes,
 * with a NUL byte, invalid UTF-8 or a \u0000 escape are invalid. */
int batch_parse_body(const char *body, size_t len, batch_kind kind, const char *custom_id, batch_request *out,
                     int *stream, char *err, size_t errlen);

/* Free what *r owns and reset it to zeros (NULL-safe, idempotent). */
void batch_request_free(batch_request *r);

/* ---- custom_id set ---- */

typedef struct batch_idset batch_idset;

/* A new empty set; exits on out of memory like mallocCheck. */
batch_idset *batch_idset_new(void);
/* Free the set and its copies of the strings (NULL-safe). */
void batch_idset_free(batch_idset *s);
/* Add a copy of id. Returns 0 when added, 1 when it was already present. */
int batch_idset_add(batch_idset *s, const char *id);
/* 1 when id is in the set, else 0. */
int batch_idset_has(const batch_idset *s, const char *id);
/* How many distinct ids the set holds. */
size_t batch_idset_count(const batch_idset *s);

/* ---- output lines ---- */

/* The id stem every output line of custom_id carries: 16 lowercase hex
 * digits of a 64-bit hash (FNV-1a, then murmur3's fmix64) of its bytes,
 * into hex[17]. With custom_id NULL it is the hash of the decimal line_no
 * under another FNV offset basis, so id-less error lines stay distinct and
 * deterministic. Output ids: "batch_req_<hex>" (the line),
 * "req_<hex>" (response.request_id), "cmpl-<hex>" / "chatcmpl-<hex>" (body). */
void batch_output_hex(const char *custom_id, size_t line_no, char hex[17]);

/* What batch_format_result needs about one finished request. */
typedef struct {
    const char *custom_id;    /* required */
    batch_kind kind;          /* text_completion or chat.completion body */
    const char *model;        /* body.model; NULL -> "" */
    int64_t created;          /* Unix seconds, [0, 10^15): the caller's
                                 (e.g. the batch's start, fixed on resume) */
    const char *text;         /* the generated text (NUL-terminated) */
    batch_finish finish;
    int64_t prompt_tokens;    /* [0, 2^31) */
    int64_t completion_tokens;/* [0, 2^31) */
    const batch_logprob *logprobs; /* (n_logprobs) when the request asked, else NULL */
    int n_logprobs;
    /* n > 1: every choice (index i = choices[i]), text/finish/logprobs above
     * unused; 0: the one choice above */
    const struct batch_choice *choices;
    int n_choices;
    const char *system_fingerprint; /* the body's "system_fingerprint"; NULL -> null */
    /* usage.completion_tokens_details (only when usage_details): the draft
     * tokens the verifier accepted and rejected (OpenAI's names for the
     * tokens of a predicted output that were and were not used) */
    int usage_details;
    int64_t accepted_prediction_tokens, rejected_prediction_tokens;
    int64_t cached_tokens;       /* usage.prompt_tokens_details.cached_tokens (usage_details) */
} batch_result;

/* One of several choices of a result (n > 1). */
typedef struct batch_choice {
    const char *text;
    batch_finish finish;
    const batch_logprob *logprobs;  /* (n_logprobs), or NULL */
    int n_logprobs;
} batch_choice;

/* One success line, malloc'd, ending in exactly one '\n' (the only newline
 * in it), NUL-terminated:
 *   {"id":"batch_req_<hex>","custom_id":...,"response":{"status_code":200,
 *    "request_id":"req_<hex>","body":<completion>},"error":null}
 * where <completion> is
 *   {"id":"cmpl-<hex>","object":"text_completion","created":C,"model":M,
 *    "choices":[{"index":0,"text":T,"logprobs":null,"finish_reason":F}],
 *    "usage":{"prompt_tokens":P,"completion_tokens":N,"total_tokens":P+N},
 *    "system_fingerprint":FP}
 * (usage_details: usage also has "prompt_tokens_details":
 *  {"cached_tokens":C} and "completion_tokens_details":
 *  {"accepted_prediction_tokens":A,"rejected_prediction_tokens":R})
 * or for chat
 *   {"id":"chatcmpl-<hex>","object":"chat.completion","created":C,"model":M,
 *    "choices":[{"index":0,"message":{"role":"assistant","content":T},
 *    "logprobs":null,"finish_reason":F}],"usage":{...}}
 * With logprobs, the choice's "logprobs" is, for completions (OpenAI's
 * legacy format), {"tokens":[...],"token_logprobs":[...],"top_logprobs":
 * [{token: logprob, ...}, ...],"text_offset":[...]} (text_offset in bytes),
 * and for chat {"content":[{"token","logprob","bytes":[...],"top_logprobs":
 * [{"token","logprob","bytes"}, ...]}, ...]}.
 * Invalid UTF-8 in text/model is replaced by U+FFFD (as a detokenizer with
 * errors="replace" would); control characters are escaped. The same
 * arguments always give the same bytes. NULL (reason in err) on a bad
 * argument, out of memory or a line over BATCH_MAX_OUTPUT_LINE. */
char *batch_format_result(const batch_result *r, char *err, size_t errlen);

/* One error line, malloc'd, ending in exactly one '\n':
 *   {"id":"batch_req_<hex>","custom_id":<custom_id or null>,
 *    "response":{"status_code":S,"request_id":"req_<hex>","body":null},
 *    "error":{"message":M,"type":T,"param":null,"code":null}}
 * (vLLM's run-batch shape: response carries the status and no body, error
 * the OpenAI error object). T is "invalid_request_error" for 4xx statuses,
 * "internal_error" otherwise. line_no (the input line, 1-based) only feeds
 * the id when custom_id is NULL, keeping those ids distinct and
 * deterministic. status_code must be in [100, 599]. NULL on a bad argument
 * or out of memory. */
char *batch_format_error(const char *custom_id, size_t line_no, int status_code,
                         const char *message);

/* The "logprobs" object of a choice (the shape batch_format_result
 * writes: legacy for completions, "content" entries for chat) as compact
 * JSON text, malloc'd; NULL on out of memory. For streamed chunks. */
char *batch_format_logprobs(const batch_logprob *lps, int n_lps, int chat);

/* ---- resume ---- */

/* Scan an existing output file: add the custom_id of every complete line
 * (ends in '\n' and parses as an output line: a JSON object with a string
 * "id", "custom_id" a string or null, and "response" and "error" members)
 * to done, set *valid_bytes to the length of the prefix made of complete
 * lines and *n_lines (may be NULL) to how many there are. A missing file is
 * empty (0 bytes, 0 lines). The caller truncates the file to *valid_bytes:
 * what follows is a line torn by a kill mid-write, whose request is redone.
 * Returns 0, or -1 with the reason in err when the file cannot be read or a
 * complete line is not an output line ("<path>: line 3 is not a batch
 * output line (...); not a file written by selfspec batch?"). */
int batch_scan_output(const char *path, batch_idset *done, off_t *valid_bytes,
                      size_t *n_lines, char *err, size_t errlen);

/* batch_scan_output on data[0..len) already in memory. */
int batch_scan_buffer(const char *data, size_t len, batch_idset *done, size_t *valid_bytes,
                      size_t *n_lines, char *err, size_t errlen);

#endif
