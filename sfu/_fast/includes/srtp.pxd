# libsrtp 2 entry points, called through function pointers taken from
# pylibsrtp's cffi module at import (sfu/_fast/datapath.pyx: _load_libsrtp),
# so that no libsrtp headers or link flags are needed here.
#
#   srtp_err_status_t srtp_protect(srtp_t ctx, void *rtp_hdr, int *len_ptr);
#   srtp_err_status_t srtp_unprotect(srtp_t ctx, void *srtp_hdr, int *len_ptr);
#
# protect works in place and appends the auth tag (and MKI): the buffer must
# have SRTP_MAX_TRAILER_LEN bytes of room after the packet.

cdef extern from *:
    """
    typedef int (*sfu_srtp_fn)(void *ctx, void *hdr, int *len_ptr);
    """
    ctypedef int (*sfu_srtp_fn)(void* ctx, void* hdr, int* len_ptr) noexcept nogil

#   srtp_err_status_t srtp_remove_stream(srtp_t session, uint32_t ssrc);  (ssrc in network order)
cdef extern from *:
    """
    typedef int (*sfu_srtp_remove_fn)(void *ctx, unsigned int ssrc_be);
    #define SFU_SRTP_REMOVE_FN_CTYPE "srtp_err_status_t(*)(struct srtp_ctx_t_ *, unsigned int)"
    """
    ctypedef int (*sfu_srtp_remove_fn)(void* ctx, unsigned int ssrc_be) noexcept nogil
    const char* SFU_SRTP_REMOVE_FN_CTYPE

# the cffi type string pylibsrtp 1.0 declares for all four functions
cdef extern from *:
    """
    #define SFU_SRTP_FN_CTYPE "srtp_err_status_t(*)(struct srtp_ctx_t_ *, void *, int *)"
    """
    const char* SFU_SRTP_FN_CTYPE

# srtp_err_status_t values (libsrtp 2: include/srtp.h)
cdef enum:
    SRTP_ERR_STATUS_OK = 0
    SRTP_ERR_STATUS_AUTH_FAIL = 7
    SRTP_ERR_STATUS_REPLAY_FAIL = 9
    SRTP_ERR_STATUS_REPLAY_OLD = 10
    SRTP_MAX_TRAILER_LEN = 16 + 128  # SRTP_MAX_TAG_LEN + SRTP_MAX_MKI_LEN
