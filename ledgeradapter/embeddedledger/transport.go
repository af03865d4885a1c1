package embeddedledger

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strconv"
)

// Transport returns an http.RoundTripper that hands each request to the
// ledger's Handler in the calling goroutine, without a socket: for a client
// in the same process as the ledger, such as `wallets-worker run` with the
// embedded ledger (ledgeradapter.Config.HTTPClient). Requests and answers
// are the same HTTP messages as over a connection (method, URL, headers,
// bodies, status); only the TCP round trip, a kernel copy each way and the
// connection's goroutines are left out. The request's URL host is ignored.
func (l *Ledger) Transport() http.RoundTripper { return HandlerTransport(l.Handler()) }

// HandlerTransport is Transport for any handler, such as the ledger's
// wrapped in middleware.
func HandlerTransport(h http.Handler) http.RoundTripper { return inProcess{h: h} }

type inProcess struct{ h http.Handler }

// inProcessAddr is the RemoteAddr of a request handed over by Transport.
const inProcessAddr = "in-process"

func (t inProcess) RoundTrip(req *http.Request) (*http.Response, error) {
	if err := req.Context().Err(); err != nil {
		closeBody(req)
		return nil, err
	}
	// What the handler sees is what a server would build from the wire: a
	// body that is never nil, the request URI, a server-side request.
	in := req.Clone(req.Context())
	in.RequestURI = req.URL.RequestURI()
	in.RemoteAddr = inProcessAddr
	if req.Body == nil {
		in.Body = http.NoBody
	}
	if in.Host == "" {
		in.Host = req.URL.Host
	}
	w := &answer{header: http.Header{}}
	t.h.ServeHTTP(w, in)
	closeBody(req)
	if w.status == 0 {
		w.status = http.StatusOK
	}
	body := w.body.Bytes()
	h := w.header.Clone()
	h.Set("Content-Length", strconv.Itoa(len(body)))
	return &http.Response{
		Status:        fmt.Sprintf("%d %s", w.status, http.StatusText(w.status)),
		StatusCode:    w.status,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        h,
		Body:          io.NopCloser(bytes.NewReader(body)),
		ContentLength: int64(len(body)),
		Request:       req,
	}, nil
}

func closeBody(req *http.Request) {
	if req.Body != nil {
		_ = req.Body.Close()
	}
}

// answer is the http.ResponseWriter of an in-process request.
type answer struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (a *answer) Header() http.Header { return a.header }

func (a *answer) WriteHeader(status int) {
	if a.status == 0 {
		a.status = status
	}
}

func (a *answer) Write(b []byte) (int, error) {
	if a.status == 0 {
		a.status = http.StatusOK
	}
	return a.body.Write(b)
}
