package devca

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"errors"
	"fmt"
	"math"
	"net"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/sdsagent/sdsagent/internal/caapi"
)

// Serve answers istio.v1.auth.IstioCertificateService over gRPC with TLS on
// lis until ctx is done, then stops gracefully, waiting a bounded time for
// in-flight calls before closing connections. It returns nil when stopped
// by ctx and an error if serving fails. Serve closes lis.
func (ca *CA) Serve(ctx context.Context, lis net.Listener) error {
	if lis == nil {
		return errors.New("devca: serve: nil listener")
	}
	creds := credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{ca.tlsCert},
		MinVersion:   tls.VersionTLS12,
	})
	srv := grpc.NewServer(grpc.Creds(creds), caapi.ServerOption())
	caapi.Register(srv, ca)

	log := ca.log.With(zap.String("addr", lis.Addr().String()))
	log.Info("serving")
	stopWatch := ca.startAuth(ctx, log)
	defer stopWatch()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lis) }()

	select {
	case err := <-errc:
		srv.Stop()
		if err == nil {
			err = grpc.ErrServerStopped
		}
		return fmt.Errorf("devca: serve: %w", err)
	case <-ctx.Done():
	}

	stopped := make(chan struct{})
	go func() {
		srv.GracefulStop()
		close(stopped)
	}()
	// The bound is wall time, not ca.clock: shutdown must finish even when
	// a test holds a fake clock still.
	grace := time.NewTimer(stopGrace)
	defer grace.Stop()
	select {
	case <-stopped:
	case <-grace.C:
		log.Warn("graceful stop timed out, closing connections", zap.Duration("grace", stopGrace))
		srv.Stop()
		<-stopped
	}
	if err := <-errc; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("devca: serve: %w", err)
	}
	log.Info("stopped")
	return nil
}

// CreateCertificate is the gRPC method IstioCertificateService/CreateCertificate.
// It authenticates the bearer token in the incoming metadata, checks the
// CSR and the requested TTL, and returns the signed leaf followed by its CA
// chain up to the root. Errors are gRPC status errors: Unauthenticated,
// InvalidArgument, PermissionDenied, FailedPrecondition or Internal, and
// ResourceExhausted with a grpc-retry-pushback-ms trailer when more than
// Config.MaxPendingCSRs are in progress.
func (ca *CA) CreateCertificate(ctx context.Context, req *caapi.CertificateRequest) (*caapi.CertificateResponse, error) {
	leave, err := ca.admit(ctx)
	if err != nil {
		return nil, err
	}
	defer leave()
	md, _ := metadata.FromIncomingContext(ctx)
	log := ca.log.With(zap.String("cluster_id", firstValue(md, "ClusterID")))
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		log = log.With(zap.String("peer", p.Addr.String()))
	}
	sa, err := ca.authenticate(md)
	if err != nil {
		return nil, refusedStatus(log, err)
	}
	if sa != nil {
		log = log.With(zap.String("subject", sa.subject()))
	}
	if req == nil {
		return nil, refusedStatus(log, refuse(refusedInvalid, "request is empty"))
	}
	csr, id, err := parseCSR(req.GetCsr(), ca.trustDomain)
	if err != nil {
		return nil, refusedStatus(log, err)
	}
	log = log.With(zap.String("spiffe_id", id.String()))
	if err := ca.authorize(sa, id.String()); err != nil {
		return nil, refusedStatus(log, err)
	}
	ttl, err := requestedTTL(req.GetValidityDuration(), ca.defaultTTL, ca.maxTTL)
	if err != nil {
		return nil, refusedStatus(log, err)
	}
	now := ca.clock.Now()
	leaf, chain, err := ca.signer.issueWorkload(csr.PublicKey, id, now, ttl)
	if err != nil {
		return nil, refusedStatus(log, err)
	}
	fields := []zap.Field{
		zap.String("serial", leaf.SerialNumber.Text(16)),
		zap.Time("not_after", leaf.NotAfter),
		zap.Duration("ttl", ttl),
	}
	if now.Add(ttl).After(ca.signer.notAfter) {
		fields = append(fields, zap.Bool("capped_at_ca_expiry", true))
	}
	log.Info("certificate issued", fields...)
	return &caapi.CertificateResponse{CertChain: chain}, nil
}

// admit lets a request in, or refuses it for load with the
// grpc-retry-pushback-ms trailer set to its slot. It comes before the
// token check: refusing must cost the CA next to nothing.
func (ca *CA) admit(ctx context.Context) (leave func(), err error) {
	leave, pushback, pending := ca.admission.enter()
	if leave != nil {
		return leave, nil
	}
	ms := strconv.FormatInt(pushback.Milliseconds(), 10)
	if err := grpc.SetTrailer(ctx, metadata.Pairs(pushbackTrailer, ms)); err != nil {
		ca.log.Debug("pushback trailer not set", zap.Error(err))
	}
	if ca.overloadLog.Allow() {
		ca.log.Warn("certificate requests refused for load",
			zap.Int("pending", pending), zap.Int("max_pending_csrs", ca.admission.max), zap.Duration("pushback", pushback))
	}
	return nil, status.Errorf(codes.ResourceExhausted,
		"CA overloaded: %d certificate requests in progress, the most it takes at once (--max-pending-csrs); retry in %s, as the %s trailer says",
		pending, pushback, pushbackTrailer)
}

// pushbackTrailer is gRPC's trailer for the wait a server asks of a
// client before its next attempt, in milliseconds (retry design A6).
const pushbackTrailer = "grpc-retry-pushback-ms"

// authenticate checks the "authorization: Bearer <token>" metadata: a
// service-account token when the CA has a JWKS, whose service account it
// returns, else the CA's development token, compared in constant time
// (nil service account: any identity). Its errors never contain the token.
func (ca *CA) authenticate(md metadata.MD) (*serviceAccount, error) {
	token, err := bearerToken(md)
	if err != nil {
		return nil, err
	}
	if ca.jwt != nil {
		sa, err := ca.jwt.verify(token, ca.clock.Now())
		if err != nil {
			return nil, err
		}
		return &sa, nil
	}
	// Hashing first makes the comparison constant time for any length.
	got, want := sha256.Sum256([]byte(token)), sha256.Sum256(ca.token)
	if subtle.ConstantTimeCompare(got[:], want[:]) != 1 {
		return nil, refuse(refusedUnauthenticated, "bearer token does not match this CA's token")
	}
	return nil, nil
}

// bearerToken returns the token of the one "authorization: Bearer" value.
func bearerToken(md metadata.MD) (string, error) {
	vals := md.Get("authorization")
	switch len(vals) {
	case 0:
		return "", refuse(refusedUnauthenticated, `missing "authorization: Bearer <token>" metadata`)
	case 1:
	default:
		return "", refuse(refusedUnauthenticated, "more than one authorization metadata value")
	}
	scheme, token, ok := strings.Cut(strings.TrimSpace(vals[0]), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", refuse(refusedUnauthenticated, "authorization metadata is not a Bearer token")
	}
	token = strings.TrimSpace(token)
	if token == "" {
		return "", refuse(refusedUnauthenticated, "bearer token is empty")
	}
	return token, nil
}

// requestedTTL turns validity_duration seconds into a lifetime: def when
// not positive, refused when above maxTTL.
func requestedTTL(secs int64, def, maxTTL time.Duration) (time.Duration, error) {
	if secs <= 0 {
		return def, nil
	}
	if secs > int64(math.MaxInt64/time.Second) {
		return 0, refuse(refusedInvalid, "requested TTL %ds is greater than the max allowed TTL %s", secs, maxTTL)
	}
	ttl := time.Duration(secs) * time.Second
	if ttl > maxTTL {
		return 0, refuse(refusedInvalid, "requested TTL %s is greater than the max allowed TTL %s", ttl, maxTTL)
	}
	return ttl, nil
}

// refusedStatus logs why a request failed and turns err into a gRPC status.
func refusedStatus(log *zap.Logger, err error) error {
	var r *refusal
	if errors.As(err, &r) {
		code := codes.InvalidArgument
		switch r.kind {
		case refusedUnauthenticated:
			code = codes.Unauthenticated
		case refusedForbidden:
			code = codes.PermissionDenied
		}
		log.Warn("certificate request refused", zap.String("reason", r.msg), zap.Stringer("code", code))
		return status.Error(code, r.msg)
	}
	var nv *notValidError
	if errors.As(err, &nv) {
		log.Error("certificate request refused", zap.String("reason", nv.Error()), zap.Stringer("code", codes.FailedPrecondition))
		return status.Error(codes.FailedPrecondition, nv.Error())
	}
	log.Error("certificate signing failed", zap.Error(err))
	return status.Error(codes.Internal, "certificate signing failed")
}

// firstValue returns the first value of key in md, or "".
func firstValue(md metadata.MD, key string) string {
	if v := md.Get(key); len(v) > 0 {
		return v[0]
	}
	return ""
}
