/*
 * InkMCP's nginx module (issue 12 item 1): the per-request rules of the local provider's front proxy that a plain
 * reverse proxy does not have, in C instead of general-purpose directives (a regex `if`, a map, headers-more).
 * Measured with benchmarks/proxy_speed.py --cost: 0.88x the instructions per kept-alive request of an nginx that
 * sets the same forwarded headers (0.99x of one that sets none), where the same rules as directives cost 0.99x.
 * Built for the exact nginx that runs by `make install`
 * (inkmcp/providers/compute/local/nginx_module/__init__.py); without a build, InkMCP's config does the same with
 * headers-more (nginx.py renders either).
 *
 *   inkmcp_host_check on;         (http, server) 400 "invalid Host header" unless Host is empty, name[:port] or
 *                                 [v6 literal][:port] with a 1-5 digit port (RFC 9112 3.2; the Python proxy's
 *                                 rule). The value is read by length, never as a C string: nginx's parser has
 *                                 already refused NUL, CR and LF in a header line.
 *   inkmcp_server_header on;      (http) with `proxy_pass_header Server`: an answer without a Server header gets
 *                                 none, unless it is one of nginx's own statuses (nginx.OWN_STATUSES) and no
 *                                 upstream was tried, which says "Server: inkmcp".
 *   inkmcp_inherited_nodelay on;  (http) each worker sets TCP_NODELAY on its TCP listening sockets; Linux copies it
 *                                 to every accepted socket, so the module tells nginx it is set and nginx skips
 *                                 the setsockopt it makes on each new client connection (proxy_buffering off).
 *   $inkmcp_forwarded             the value of the proxy's `X-Forwarded-For` line and the four lines after it, from
 *                                 the connection, in one piece:
 *                                   <client address>
 *                                   X-Real-IP: <client address>
 *                                   X-Forwarded-Host: <$host>[:<the port it was reached on, unless 80>]
 *                                   X-Forwarded-Proto: http|https
 *                                   X-Forwarded-Port: <the port it was reached on>
 *                                 used as `proxy_set_header X-Forwarded-For $inkmcp_forwarded;` with those names
 *                                 (and `Forwarded`) also set to "" so the proxy module drops the client's own
 *                                 (nginx.py). Why one value: six `proxy_set_header` lines with variables ran six
 *                                 scripts and five variables a request (~2,400 instructions); this is one variable,
 *                                 one allocation and five copies (~300). The client cannot inject a line through
 *                                 it: nginx's parser refuses CR, LF and NUL in a header, and $host is nginx's
 *                                 validated, lowercased name.
 */
#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <netinet/tcp.h>

typedef struct {
    ngx_flag_t  server_header;
    ngx_flag_t  inherited_nodelay;
    ngx_array_t nodelay_listening;   /* ngx_listening_t * that have TCP_NODELAY */
} ngx_http_inkmcp_main_conf_t;

typedef struct {
    ngx_flag_t  host_check;
} ngx_http_inkmcp_srv_conf_t;

static ngx_int_t ngx_http_inkmcp_add_variables(ngx_conf_t *cf);
static ngx_int_t ngx_http_inkmcp_init(ngx_conf_t *cf);
static ngx_int_t ngx_http_inkmcp_init_process(ngx_cycle_t *cycle);
static void *ngx_http_inkmcp_create_main_conf(ngx_conf_t *cf);
static void *ngx_http_inkmcp_create_srv_conf(ngx_conf_t *cf);
static char *ngx_http_inkmcp_merge_srv_conf(ngx_conf_t *cf, void *parent, void *child);

static ngx_command_t ngx_http_inkmcp_commands[] = {
    { ngx_string("inkmcp_host_check"), NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot, NGX_HTTP_SRV_CONF_OFFSET, offsetof(ngx_http_inkmcp_srv_conf_t, host_check), NULL },
    { ngx_string("inkmcp_server_header"), NGX_HTTP_MAIN_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot, NGX_HTTP_MAIN_CONF_OFFSET, offsetof(ngx_http_inkmcp_main_conf_t, server_header), NULL },
    { ngx_string("inkmcp_inherited_nodelay"), NGX_HTTP_MAIN_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot, NGX_HTTP_MAIN_CONF_OFFSET, offsetof(ngx_http_inkmcp_main_conf_t, inherited_nodelay), NULL },
    ngx_null_command
};

static ngx_http_module_t ngx_http_inkmcp_module_ctx = {
    ngx_http_inkmcp_add_variables, ngx_http_inkmcp_init,
    ngx_http_inkmcp_create_main_conf, NULL,
    ngx_http_inkmcp_create_srv_conf, ngx_http_inkmcp_merge_srv_conf,
    NULL, NULL
};

ngx_module_t ngx_http_inkmcp_module = {
    NGX_MODULE_V1, &ngx_http_inkmcp_module_ctx, ngx_http_inkmcp_commands, NGX_HTTP_MODULE,
    NULL, NULL, ngx_http_inkmcp_init_process, NULL, NULL, NULL, NULL, NGX_MODULE_V1_PADDING
};

static ngx_http_output_header_filter_pt ngx_http_next_header_filter;
static ngx_str_t ngx_http_inkmcp_bad_host = ngx_string("invalid Host header\n");
static ngx_str_t ngx_http_inkmcp_text = ngx_string("text/plain");

static void *
ngx_http_inkmcp_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_inkmcp_main_conf_t *conf = ngx_pcalloc(cf->pool, sizeof(*conf));
    if (conf == NULL) return NULL;
    conf->server_header = NGX_CONF_UNSET;
    conf->inherited_nodelay = NGX_CONF_UNSET;
    if (ngx_array_init(&conf->nodelay_listening, cf->pool, 4, sizeof(ngx_listening_t *)) != NGX_OK) return NULL;
    return conf;
}

static void *
ngx_http_inkmcp_create_srv_conf(ngx_conf_t *cf)
{
    ngx_http_inkmcp_srv_conf_t *conf = ngx_pcalloc(cf->pool, sizeof(*conf));
    if (conf == NULL) return NULL;
    conf->host_check = NGX_CONF_UNSET;
    return conf;
}

static char *
ngx_http_inkmcp_merge_srv_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_inkmcp_srv_conf_t *prev = parent, *conf = child;
    ngx_conf_merge_value(conf->host_check, prev->host_check, 0);
    return NGX_CONF_OK;
}

/* RFC 9112 3.2 / the Python proxy's rule: "", name[:port] or [v6 literal][:port], port 1-5 digits. */
static ngx_int_t
ngx_http_inkmcp_host_ok(u_char *p, size_t len)
{
    u_char *end = p + len;
    size_t  n;

    if (len == 0) return 1;
    if (*p == '[') {
        for (p++, n = 0; p < end && *p != ']'; p++, n++) {
            u_char c = *p;
            if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') || c == ':' || c == '.'))
                return 0;
        }
        if (p == end || n == 0) return 0;
        p++;
    } else {
        for (n = 0; p < end && *p != ':'; p++, n++) {
            u_char c = *p;
            if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '.' || c == '-'))
                return 0;
        }
        if (n == 0) return 0;
    }
    if (p == end) return 1;
    if (*p++ != ':') return 0;
    for (n = 0; p < end; p++, n++) {
        if (*p < '0' || *p > '9') return 0;
    }
    return n >= 1 && n <= 5;
}

static ngx_int_t
ngx_http_inkmcp_post_read(ngx_http_request_t *r)
{
    ngx_http_inkmcp_main_conf_t *mcf;
    ngx_http_inkmcp_srv_conf_t  *scf;
    ngx_http_complex_value_t     cv;
    ngx_listening_t            **ls;
    ngx_connection_t            *c = r->connection;
    ngx_uint_t                   i;

    if (r != r->main) return NGX_DECLINED;
    mcf = ngx_http_get_module_main_conf(r, ngx_http_inkmcp_module);
    if (c->tcp_nodelay == NGX_TCP_NODELAY_UNSET && mcf->nodelay_listening.nelts) {
        ls = mcf->nodelay_listening.elts;
        for (i = 0; i < mcf->nodelay_listening.nelts; i++) {
            if (ls[i] == c->listening) { c->tcp_nodelay = NGX_TCP_NODELAY_SET; break; }
        }
    }
    scf = ngx_http_get_module_srv_conf(r, ngx_http_inkmcp_module);
    if (scf->host_check && r->headers_in.host
        && !ngx_http_inkmcp_host_ok(r->headers_in.host->value.data, r->headers_in.host->value.len))
    {
        ngx_memzero(&cv, sizeof(cv));
        cv.value = ngx_http_inkmcp_bad_host;
        /* The request ends here: in this phase NGX_OK would go on to the next phase (and the app). As with the
         * config's `return 400`, the connection stays open for the client's next request (each is checked). */
        ngx_http_finalize_request(r, ngx_http_send_response(r, NGX_HTTP_BAD_REQUEST, &ngx_http_inkmcp_text, &cv));
        return NGX_DONE;
    }
    return NGX_DECLINED;
}

#define INKMCP_REAL_IP   "\r\nX-Real-IP: "
#define INKMCP_FWD_HOST  "\r\nX-Forwarded-Host: "
#define INKMCP_FWD_PROTO "\r\nX-Forwarded-Proto: "
#define INKMCP_FWD_PORT  "\r\nX-Forwarded-Port: "

static ngx_int_t
ngx_http_inkmcp_forwarded_variable(ngx_http_request_t *r, ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_connection_t         *c = r->connection;
    ngx_http_core_srv_conf_t *cscf;
    ngx_str_t                 host, scheme;
    u_char                    port[sizeof("65535") - 1], *p, *q;
    size_t                    port_len, suffix_len;
    ngx_uint_t                n;

    if (r->headers_in.server.len) {   /* what $host is */
        host = r->headers_in.server;
    } else {
        cscf = ngx_http_get_module_srv_conf(r, ngx_http_core_module);
        host = cscf->server_name;
    }
    ngx_str_set(&scheme, "http");
#if (NGX_HTTP_SSL)
    if (c->ssl) { ngx_str_set(&scheme, "https"); }
#endif
    /* the port the client reached (the listening socket's: set at accept, no getsockname) */
    n = ngx_inet_get_port(c->local_sockaddr);
    q = port + sizeof(port);
    do { *--q = (u_char) ('0' + n % 10); n /= 10; } while (n && q > port);
    port_len = port + sizeof(port) - q;
    suffix_len = (port_len == 2 && q[0] == '8' && q[1] == '0') ? 0 : 1 + port_len;

    v->len = c->addr_text.len * 2 + sizeof(INKMCP_REAL_IP) - 1 + sizeof(INKMCP_FWD_HOST) - 1 + host.len + suffix_len
             + sizeof(INKMCP_FWD_PROTO) - 1 + scheme.len + sizeof(INKMCP_FWD_PORT) - 1 + port_len;
    p = ngx_pnalloc(r->pool, v->len);
    if (p == NULL) return NGX_ERROR;
    v->data = p;
    p = ngx_cpymem(p, c->addr_text.data, c->addr_text.len);
    p = ngx_cpymem(p, INKMCP_REAL_IP, sizeof(INKMCP_REAL_IP) - 1);
    p = ngx_cpymem(p, c->addr_text.data, c->addr_text.len);
    p = ngx_cpymem(p, INKMCP_FWD_HOST, sizeof(INKMCP_FWD_HOST) - 1);
    p = ngx_cpymem(p, host.data, host.len);
    if (suffix_len) {
        *p++ = ':';
        p = ngx_cpymem(p, q, port_len);
    }
    p = ngx_cpymem(p, INKMCP_FWD_PROTO, sizeof(INKMCP_FWD_PROTO) - 1);
    p = ngx_cpymem(p, scheme.data, scheme.len);
    p = ngx_cpymem(p, INKMCP_FWD_PORT, sizeof(INKMCP_FWD_PORT) - 1);
    (void) ngx_cpymem(p, q, port_len);
    v->valid = 1;
    v->no_cacheable = 0;
    v->not_found = 0;
    return NGX_OK;
}

static ngx_int_t
ngx_http_inkmcp_add_variables(ngx_conf_t *cf)
{
    static ngx_str_t     name = ngx_string("inkmcp_forwarded");
    ngx_http_variable_t *var = ngx_http_add_variable(cf, &name, NGX_HTTP_VAR_NOHASH);

    if (var == NULL) return NGX_ERROR;
    var->get_handler = ngx_http_inkmcp_forwarded_variable;
    return NGX_OK;
}

static ngx_int_t
ngx_http_inkmcp_header_filter(ngx_http_request_t *r)
{
    ngx_http_inkmcp_main_conf_t *mcf;
    ngx_table_elt_t             *h;
    ngx_uint_t                   own;

    if (r->headers_out.server != NULL || r != r->main) return ngx_http_next_header_filter(r);
    mcf = ngx_http_get_module_main_conf(r, ngx_http_inkmcp_module);
    if (mcf->server_header != 1) return ngx_http_next_header_filter(r);
    switch (r->headers_out.status) {
    case 400: case 404: case 405: case 408: case 411: case 413: case 414: case 416: case 421: case 431: case 494:
    case 500: case 501: case 502: case 503: case 504: case 505: case 507:
        own = r->upstream_states == NULL || r->upstream_states->nelts == 0;
        break;
    default:
        own = 0;
    }
    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) return NGX_ERROR;
#if (nginx_version >= 1023000)
    h->next = NULL;   /* 1.23 chained same-named headers: ngx_list_push does not zero the slot */
#endif
    ngx_str_set(&h->key, "Server");
    h->lowcase_key = (u_char *) "server";
    if (own) {
        h->hash = 1;
        ngx_str_set(&h->value, "inkmcp");
    } else {
        h->hash = 0;   /* a slot nginx's header filter skips: no Server line at all */
        ngx_str_null(&h->value);
    }
    r->headers_out.server = h;
    return ngx_http_next_header_filter(r);
}

static ngx_int_t
ngx_http_inkmcp_init(ngx_conf_t *cf)
{
    ngx_http_handler_pt       *h;
    ngx_http_core_main_conf_t *cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_POST_READ_PHASE].handlers);
    if (h == NULL) return NGX_ERROR;
    *h = ngx_http_inkmcp_post_read;
    ngx_http_next_header_filter = ngx_http_top_header_filter;
    ngx_http_top_header_filter = ngx_http_inkmcp_header_filter;
    return NGX_OK;
}

static ngx_int_t
ngx_http_inkmcp_init_process(ngx_cycle_t *cycle)
{
    ngx_http_inkmcp_main_conf_t *mcf;
    ngx_listening_t             *ls, **p;
    ngx_uint_t                   i;
    int                          on;
    socklen_t                    len;

    mcf = ngx_http_cycle_get_module_main_conf(cycle, ngx_http_inkmcp_module);
    if (mcf == NULL || mcf->inherited_nodelay != 1) return NGX_OK;
    ls = cycle->listening.elts;
    for (i = 0; i < cycle->listening.nelts; i++) {
        if (ls[i].fd == (ngx_socket_t) -1 || ls[i].type != SOCK_STREAM
            || (ls[i].sockaddr->sa_family != AF_INET && ls[i].sockaddr->sa_family != AF_INET6))
            continue;
        on = 1;
        len = sizeof(on);
        (void) setsockopt(ls[i].fd, IPPROTO_TCP, TCP_NODELAY, &on, len);
        on = 0;
        if (getsockopt(ls[i].fd, IPPROTO_TCP, TCP_NODELAY, &on, &len) == 0 && on) {
            p = ngx_array_push(&mcf->nodelay_listening);
            if (p == NULL) return NGX_ERROR;
            *p = &ls[i];
        }
    }
    return NGX_OK;
}
