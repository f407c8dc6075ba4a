package sds

import (
	"math"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
)

// A request over MaxMessageBytes is refused by our own code, so that its
// status names the flag: gRPC's own check writes the status itself,
// before any handler or interceptor runs, with only the byte count. gRPC
// is given twice the limit (hardMessageBytes), the most it reads of one
// message; the handlers receive through sizedCodec, which leaves a
// message between the two limits undecoded and reports its size.

// hardMessageBytes is the size over which gRPC refuses a message before
// reading it: twice MaxMessageBytes.
func hardMessageBytes(limit int) int { return int(min(2*int64(limit), math.MaxInt32)) }

// sized receives a message through sizedCodec: msg is decoded if the
// message is at most max bytes long, otherwise size is its length.
type sized struct {
	msg  any
	max  int
	size int
}

// sizedCodec is the server's codec: gRPC's proto codec, except that it
// decodes into a *sized within its limit.
type sizedCodec struct{ encoding.CodecV2 }

func newSizedCodec() grpc.ServerOption {
	return grpc.ForceServerCodecV2(sizedCodec{encoding.GetCodecV2(proto.Name)})
}

func (c sizedCodec) Unmarshal(data mem.BufferSlice, v any) error {
	s, ok := v.(*sized)
	if !ok {
		return c.CodecV2.Unmarshal(data, v)
	}
	if n := data.Len(); n > s.max {
		s.size = n
		return nil
	}
	return c.CodecV2.Unmarshal(data, s.msg)
}

// recvSized receives a message of type M on a stream (recv is the
// stream's RecvMsg, or a unary handler's decode function), or returns
// the limit's error for one over MaxMessageBytes.
func recvSized[M any](s *Server, recv func(any) error) (*M, error) {
	msg := new(M)
	in := sized{msg: msg, max: s.cfg.Limits.MaxMessageBytes}
	if err := recv(&in); err != nil {
		return nil, err
	}
	if in.size > 0 {
		return nil, s.limitError(limitMessageBytes, nil, "request message of %d bytes is over the size limit of %d bytes (%s)",
			in.size, s.cfg.Limits.MaxMessageBytes, flagMaxMessageBytes)
	}
	return msg, nil
}
