/* Native calls through libffi, shared by calls.c (CALL) and timing.c (TIME). */
#ifndef FARM_CALLS_H
#define FARM_CALLS_H

#include "board.h"

#include <ffi.h>

#define MAX_ARGS 256

typedef enum { K_VOID, K_INT, K_FLOAT, K_BOOL, K_POINTER } Kind;

/* One parameter or return type of a signature. */
typedef struct {
    Kind kind;
    int dtype;        /* its dtype (DTYPE_NAMES); for pointers the dtype they accept, -1: any */
    int is_unsigned;  /* integers */
    int size;         /* integers and floats: bytes */
    ffi_type *ffi;
    char spelling[64];
    char name[64];
} CType;

typedef struct {
    CType ret;
    char name[128];
    CType *params;
    int count;
    char *text; /* the signature, whitespace collapsed */
} Signature;

typedef struct {
    void *symbol;
    char *activity; /* what the session status shows while it runs: "running vadd() from libvadd.so" */
    char *label;    /* "vadd() from libvadd.so": the end of `activity` */
    Signature *signature; /* NULL: pointers, C int and double as the arguments' tags say */
    ffi_cif cif;          /* with a signature: prepared once */
    ffi_type **types;
} Function;

/* A call ready to make: its arguments converted to their C types. */
typedef struct {
    Function *function;
    ffi_cif cif; /* without a signature: prepared for this call */
    ffi_cif *use;
    ffi_type *types[MAX_ARGS];
    void *values[MAX_ARGS];
    union {
        int64_t i64;
        uint64_t u64;
        int32_t i32;
        uint32_t u32;
        int16_t i16;
        uint16_t u16;
        int8_t i8;
        uint8_t u8;
        double f64;
        float f32;
        void *pointer;
    } storage[MAX_ARGS];
    Array *first; /* the first argument's array, if it is one */
    int count;
} Prepared;

/* Parses a signature `RET [NAME](TYPE [NAME], ...)`; NULL with an ArgumentError set if it is not one. */
Signature *parse_signature(Session *s, const char *text, size_t n);
void free_signature(Signature *sig);

/* Decodes a CALL payload and checks it against the function's signature: 0, or -1 with the error set. */
int prepare_call(Session *s, const unsigned char *payload, uint64_t size, Prepared *call);
/* TIME's options in a request's metadata (timing.c): 0, or -1 with the ArgumentError set. */
int timing_check(Session *s, const JValue *meta);
void call_result(const Prepared *call, void *result, unsigned char out[9]);

#endif
