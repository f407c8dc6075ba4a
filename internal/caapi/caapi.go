// Package caapi is the wire form of Istio's certificate service,
// istio.v1.auth.IstioCertificateService/CreateCertificate (istio.io/api
// security/v1alpha1 ca.proto), encoded by hand with protowire.
//
// The agent used istio.io/api's generated package, which imports the
// deprecated github.com/golang/protobuf, and with it protodesc and the
// descriptor of every descriptor option: their initialisation ran on every
// start (issue 13). The service has two small messages, so this package
// encodes them itself and gives gRPC a codec for them. The wire format is
// the proto's: the tests check it against istio.io/api's messages.
package caapi

import (
	"context"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
)

// Service and method names, as Istio's ca.proto declares them.
const (
	// ServiceName is the full gRPC service name.
	ServiceName = "istio.v1.auth.IstioCertificateService"
	// CreateCertificateMethod is the full method path of CreateCertificate.
	CreateCertificateMethod = "/" + ServiceName + "/CreateCertificate"
)

// Field numbers of ca.proto.
const (
	fieldCsr              protowire.Number = 1 // IstioCertificateRequest.csr
	fieldValidityDuration protowire.Number = 3 // IstioCertificateRequest.validity_duration
	fieldCertChain        protowire.Number = 1 // IstioCertificateResponse.cert_chain
)

// CertificateRequest is IstioCertificateRequest without its metadata
// field, which the agent never sends (it sends ClusterID as gRPC
// metadata, as Istio's agent does) and the development CA ignores.
type CertificateRequest struct {
	// Csr is the PEM-encoded certificate signing request.
	Csr string
	// ValidityDuration is the requested lifetime in seconds; 0 lets the CA
	// choose.
	ValidityDuration int64
}

// GetCsr returns r's CSR; "" for a nil r.
func (r *CertificateRequest) GetCsr() string {
	if r == nil {
		return ""
	}
	return r.Csr
}

// GetValidityDuration returns r's requested lifetime; 0 for a nil r.
func (r *CertificateRequest) GetValidityDuration() int64 {
	if r == nil {
		return 0
	}
	return r.ValidityDuration
}

// CertificateResponse is IstioCertificateResponse.
type CertificateResponse struct {
	// CertChain is the PEM-encoded leaf first, then its CA chain.
	CertChain []string
}

// GetCertChain returns r's chain; nil for a nil r.
func (r *CertificateResponse) GetCertChain() []string {
	if r == nil {
		return nil
	}
	return r.CertChain
}

// Marshal returns r's protobuf encoding.
func (r *CertificateRequest) Marshal() []byte {
	var b []byte
	if r.Csr != "" {
		b = protowire.AppendTag(b, fieldCsr, protowire.BytesType)
		b = protowire.AppendString(b, r.Csr)
	}
	if r.ValidityDuration != 0 {
		b = protowire.AppendTag(b, fieldValidityDuration, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(r.ValidityDuration))
	}
	return b
}

// Unmarshal sets r from its protobuf encoding b, skipping fields it does
// not hold (metadata, or any added later).
func (r *CertificateRequest) Unmarshal(b []byte) error {
	*r = CertificateRequest{}
	return eachField(b, func(num protowire.Number, typ protowire.Type, v []byte, n uint64) error {
		switch {
		case num == fieldCsr && typ == protowire.BytesType:
			r.Csr = string(v)
		case num == fieldValidityDuration && typ == protowire.VarintType:
			r.ValidityDuration = int64(n)
		}
		return nil
	})
}

// Marshal returns r's protobuf encoding.
func (r *CertificateResponse) Marshal() []byte {
	var b []byte
	for _, c := range r.CertChain {
		b = protowire.AppendTag(b, fieldCertChain, protowire.BytesType)
		b = protowire.AppendString(b, c)
	}
	return b
}

// Unmarshal sets r from its protobuf encoding b, skipping unknown fields.
func (r *CertificateResponse) Unmarshal(b []byte) error {
	*r = CertificateResponse{}
	return eachField(b, func(num protowire.Number, typ protowire.Type, v []byte, _ uint64) error {
		if num == fieldCertChain && typ == protowire.BytesType {
			r.CertChain = append(r.CertChain, string(v))
		}
		return nil
	})
}

// eachField calls fn with every field of b: its number, wire type, and
// its bytes (length-delimited) or value (varint).
func eachField(b []byte, fn func(protowire.Number, protowire.Type, []byte, uint64) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return fmt.Errorf("caapi: bad field tag: %w", protowire.ParseError(n))
		}
		b = b[n:]
		var (
			v []byte
			u uint64
		)
		switch typ {
		case protowire.BytesType:
			v, n = protowire.ConsumeBytes(b)
		case protowire.VarintType:
			u, n = protowire.ConsumeVarint(b)
		default:
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return fmt.Errorf("caapi: field %d: %w", num, protowire.ParseError(n))
		}
		b = b[n:]
		if err := fn(num, typ, v, u); err != nil {
			return err
		}
	}
	return nil
}

// message is what Codec encodes itself.
type message interface {
	Marshal() []byte
	Unmarshal([]byte) error
}

// Codec is gRPC's "proto" codec for this package's messages; any other
// value goes to the "proto" codec gRPC registered, so a server forced to
// use it still serves generated protos.
type Codec struct{}

var _ encoding.CodecV2 = Codec{}

// Name returns "proto": on the wire these are protobuf messages.
func (Codec) Name() string { return "proto" }

// Marshal encodes v.
func (Codec) Marshal(v any) (mem.BufferSlice, error) {
	if m, ok := v.(message); ok {
		return mem.BufferSlice{mem.SliceBuffer(m.Marshal())}, nil
	}
	return encoding.GetCodecV2("proto").Marshal(v)
}

// Unmarshal decodes data into v.
func (Codec) Unmarshal(data mem.BufferSlice, v any) error {
	if m, ok := v.(message); ok {
		return m.Unmarshal(data.Materialize())
	}
	return encoding.GetCodecV2("proto").Unmarshal(data, v)
}

// CreateCertificate calls the CA's CreateCertificate on cc.
func CreateCertificate(ctx context.Context, cc grpc.ClientConnInterface, req *CertificateRequest, opts ...grpc.CallOption) (*CertificateResponse, error) {
	resp := &CertificateResponse{}
	opts = append([]grpc.CallOption{grpc.ForceCodecV2(Codec{})}, opts...)
	if err := cc.Invoke(ctx, CreateCertificateMethod, req, resp, opts...); err != nil {
		return nil, err
	}
	return resp, nil
}

// Server is what a CA implements to answer CreateCertificate.
type Server interface {
	CreateCertificate(context.Context, *CertificateRequest) (*CertificateResponse, error)
}

// Register registers srv as the IstioCertificateService of s. s must be
// created with ServerOption.
func Register(s grpc.ServiceRegistrar, srv Server) {
	s.RegisterService(&grpc.ServiceDesc{
		ServiceName: ServiceName,
		HandlerType: (*Server)(nil),
		Methods: []grpc.MethodDesc{{
			MethodName: "CreateCertificate",
			Handler:    createCertificateHandler,
		}},
		Metadata: "security/v1alpha1/ca.proto",
	}, srv)
}

// ServerOption makes a gRPC server decode this package's messages.
func ServerOption() grpc.ServerOption { return grpc.ForceServerCodecV2(Codec{}) }

func createCertificateHandler(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
	req := &CertificateRequest{}
	if err := dec(req); err != nil {
		return nil, err
	}
	call := func(ctx context.Context, req any) (any, error) {
		return srv.(Server).CreateCertificate(ctx, req.(*CertificateRequest))
	}
	if interceptor == nil {
		return call(ctx, req)
	}
	return interceptor(ctx, req, &grpc.UnaryServerInfo{Server: srv, FullMethod: CreateCertificateMethod}, call)
}
