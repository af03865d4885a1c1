package ledgeradapter_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/stretchr/testify/require"
)

const subsetSpec = "testdata/ledger-v2-subset.yaml"

// officialSpecPath is the official file, copied into testdata (its origin and
// licence are in testdata/README.md); LEDGER_OPENAPI_OFFICIAL overrides it to
// check the subset against another version.
func officialSpecPath() string {
	if p := os.Getenv("LEDGER_OPENAPI_OFFICIAL"); p != "" {
		return p
	}
	return filepath.Join("testdata", "ledger-v2-official.yaml")
}

func loadSpec(t *testing.T, path string) *openapi3.T {
	t.Helper()
	doc, err := openapi3.NewLoader().LoadFromFile(path)
	require.NoError(t, err, "load %s", path)
	return doc
}

// subsetOnlyPaths are not in the official file (CONTRACT §6).
var subsetOnlyPaths = map[string]bool{"/_healthcheck": true}

// bodyless marks operations where the official file declares a request body
// that the server never reads (a GET).
var bodyless = map[string]bool{"GET /v2/{ledger}/logs": true}

func TestSubsetIsValidOpenAPI(t *testing.T) {
	t.Parallel()
	require.NoError(t, loadSpec(t, subsetSpec).Validate(context.Background()))
}

// TestSubsetAgreesWithOfficialSpec catches drift between the subset used to
// validate our traffic and the official description: same paths, methods and
// operation ids, parameters that exist there, same request bodies, statuses
// and headers that exist there with the same schemas, and, for every schema
// both define, the same required properties and property types.
func TestSubsetAgreesWithOfficialSpec(t *testing.T) {
	t.Parallel()
	path := officialSpecPath()
	_, err := os.Stat(path)
	require.NoError(t, err, "the official OpenAPI file is missing (testdata/README.md says where it comes from)")
	official, subset := loadSpec(t, path), loadSpec(t, subsetSpec)

	for p, item := range subset.Paths.Map() {
		if subsetOnlyPaths[p] {
			continue
		}
		offItem := official.Paths.Value(p)
		require.NotNil(t, offItem, "path %s is not in the official file", p)
		for method, op := range item.Operations() {
			where := method + " " + p
			offOp := offItem.GetOperation(method)
			require.NotNil(t, offOp, "%s is not in the official file", where)
			require.Equal(t, offOp.OperationID, op.OperationID, where)

			ours, theirs := params(item, op), params(offItem, offOp)
			for key, required := range ours {
				offRequired, ok := theirs[key]
				require.True(t, ok, "%s: parameter %s is not in the official file", where, key)
				require.Equal(t, offRequired, required, "%s: parameter %s required", where, key)
			}
			for key, required := range theirs {
				if required {
					require.Contains(t, ours, key, "%s: required parameter %s missing", where, key)
				}
			}

			if bodyless[where] {
				require.Nil(t, op.RequestBody, where)
			} else {
				require.Equal(t, offOp.RequestBody == nil, op.RequestBody == nil, "%s: request body", where)
				if op.RequestBody != nil {
					require.Equal(t, offOp.RequestBody.Value.Required, op.RequestBody.Value.Required, "%s: body required", where)
					require.Equal(t, contentRefs(offOp.RequestBody.Value.Content), contentRefs(op.RequestBody.Value.Content), "%s: body schema", where)
				}
			}

			for status, resp := range op.Responses.Map() {
				offResp := offOp.Responses.Value(status)
				if offResp == nil {
					offResp = offOp.Responses.Default()
				}
				require.NotNil(t, offResp, "%s: status %s is not in the official file", where, status)
				if len(resp.Value.Content) > 0 {
					require.Equal(t, contentRefs(offResp.Value.Content), contentRefs(resp.Value.Content), "%s %s: schema", where, status)
				}
				for name, h := range resp.Value.Headers {
					offH, ok := offResp.Value.Headers[name]
					require.True(t, ok, "%s %s: header %s is not in the official file", where, status, name)
					requireSameType(t, offH.Value.Schema.Value, h.Value.Schema.Value, where+" "+status+" header "+name)
				}
			}
		}
	}

	for name, s := range subset.Components.Schemas {
		off, ok := official.Components.Schemas[name]
		require.True(t, ok, "schema %s is not in the official file", name)
		compareSchema(t, name, off.Value, s.Value)
	}
}

// params maps "in:name" to required, path-level parameters included.
func params(item *openapi3.PathItem, op *openapi3.Operation) map[string]bool {
	m := map[string]bool{}
	for _, list := range []openapi3.Parameters{item.Parameters, op.Parameters} {
		for _, p := range list {
			// Header names are case-insensitive.
			name := p.Value.Name
			if p.Value.In == openapi3.ParameterInHeader {
				name = strings.ToLower(name)
			}
			m[p.Value.In+":"+name] = p.Value.Required
		}
	}
	return m
}

func contentRefs(c openapi3.Content) map[string]string {
	m := map[string]string{}
	for mime, mt := range c {
		if mt.Schema != nil {
			m[mime] = mt.Schema.Ref
		}
	}
	return m
}

func requireSameType(t *testing.T, official, ours *openapi3.Schema, where string) {
	t.Helper()
	if official.Type != nil && ours.Type != nil {
		require.Equal(t, official.Type.Slice(), ours.Type.Slice(), "%s: type", where)
	}
	require.Equal(t, official.Format, ours.Format, "%s: format", where)
	if len(official.Enum) > 0 {
		for _, v := range ours.Enum {
			require.Contains(t, official.Enum, v, "%s: enum", where)
		}
	}
}

func compareSchema(t *testing.T, where string, official, ours *openapi3.Schema) {
	t.Helper()
	requireSameType(t, official, ours, where)
	require.Equal(t, sorted(official.Required), sorted(ours.Required), "%s: required properties", where)
	for prop, ref := range ours.Properties {
		offRef, ok := official.Properties[prop]
		require.True(t, ok, "%s: property %s is not in the official file", where, prop)
		w := where + "." + prop
		require.Equal(t, offRef.Ref, ref.Ref, "%s: $ref", w)
		if ref.Ref == "" {
			compareSchema(t, w, offRef.Value, ref.Value)
		}
	}
	if ours.Items != nil {
		require.NotNil(t, official.Items, "%s: items", where)
		require.Equal(t, official.Items.Ref, ours.Items.Ref, "%s: items $ref", where)
	}
	if ap := ours.AdditionalProperties.Schema; ap != nil {
		offAP := official.AdditionalProperties.Schema
		require.NotNil(t, offAP, "%s: additionalProperties", where)
		require.Equal(t, offAP.Ref, ap.Ref, "%s: additionalProperties $ref", where)
		requireSameType(t, offAP.Value, ap.Value, where+".additionalProperties")
	}
	for _, alt := range ours.OneOf {
		if alt.Ref == "" {
			continue
		}
		require.True(t, slices.ContainsFunc(official.OneOf, func(r *openapi3.SchemaRef) bool { return r.Ref == alt.Ref }),
			"%s: oneOf %s is not in the official file", where, alt.Ref)
	}
	// allOf parts are compared in order: a subset keeps every one.
	require.Len(t, ours.AllOf, len(official.AllOf), "%s: allOf", where)
	for i, part := range ours.AllOf {
		w := fmt.Sprintf("%s.allOf[%d]", where, i)
		require.Equal(t, official.AllOf[i].Ref, part.Ref, "%s: $ref", w)
		if part.Ref == "" {
			compareSchema(t, w, official.AllOf[i].Value, part.Value)
		}
	}
	if d := ours.Discriminator; d != nil {
		require.NotNil(t, official.Discriminator, "%s: discriminator", where)
		require.Equal(t, official.Discriminator.PropertyName, d.PropertyName, "%s: discriminator", where)
		for value, ref := range d.Mapping {
			offRef, ok := official.Discriminator.Mapping[value]
			require.True(t, ok, "%s: discriminator value %s is not in the official file", where, value)
			require.Equal(t, offRef.Ref, ref.Ref, "%s: discriminator value %s", where, value)
		}
	}
}

func sorted(s []string) []string {
	out := append([]string{}, s...)
	sort.Strings(out)
	return out
}
