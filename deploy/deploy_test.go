// Package deploy_test checks the deployment files — Dockerfile,
// .dockerignore, docker-compose.yml, deploy/kubernetes and
// deploy/nats-helm-values.yaml — against each other and against the worker's
// real command line. It needs neither Docker nor a cluster nor the network:
// the compose file is loaded and schema-validated by compose-go, every
// Kubernetes manifest is decoded strictly into its typed API object, and the
// flags come from the help text of `wallets-worker run` and `wallets-worker
// publish create-balance`, printed in process by the same code the binary runs.
package deploy_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	composecli "github.com/compose-spec/compose-go/v2/cli"
	composetypes "github.com/compose-spec/compose-go/v2/types"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/stretchr/testify/require"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	k8syaml "k8s.io/apimachinery/pkg/util/yaml"
	k8sjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"

	"github.com/wallets-worker/wallets-worker/internal/cli"
)

// repoRoot is where the top-level files live, seen from this package's directory.
const repoRoot = ".."

// drainMargin is how much longer than --drain-timeout a container is given
// between SIGTERM and SIGKILL: the drain ends, then connections close.
const drainMargin = 10 * time.Second

// flagSpec is one flag of a command, as its help text shows it.
type flagSpec struct {
	name string // without the dashes
	typ  string // "string", "duration", "int", ...; "" for a boolean
	def  string // the default the help prints, "" when none
}

// flagSet maps environment variable names (WALLETS_WORKER_...) to flags.
type flagSet map[string]flagSpec

// bundle is what every test starts from.
type bundle struct {
	run, publish flagSet
	drainDefault time.Duration
}

func setup(t *testing.T) bundle {
	t.Helper()
	b := bundle{
		run:     helpFlags(t, "run", "--help"),
		publish: helpFlags(t, "publish", "create-balance", "--help"),
	}
	for _, env := range []string{"WALLETS_WORKER_NATS_URL", "WALLETS_WORKER_LEDGER_URL", "WALLETS_WORKER_HTTP_ADDR", "WALLETS_WORKER_DRAIN_TIMEOUT"} {
		require.Contains(t, b.run, env, "run --help no longer lists %s", env)
	}
	require.Contains(t, b.publish, "WALLETS_WORKER_NATS_URL")
	d, err := time.ParseDuration(b.run["WALLETS_WORKER_DRAIN_TIMEOUT"].def)
	require.NoError(t, err, "default of --drain-timeout")
	b.drainDefault = d
	return b
}

// helpFlags runs the real command line's --help in process and reads every
// flag block of it:
//
//	--drain-timeout duration
//	  	how long a shutdown waits for the commands in flight (default 25s)
//	  	[$WALLETS_WORKER_DRAIN_TIMEOUT]
func helpFlags(t *testing.T, args ...string) flagSet {
	t.Helper()
	var out bytes.Buffer
	code := cli.Main(context.Background(), args, cli.Env{Stdout: &out, Stderr: &out, Getenv: func(string) string { return "" }})
	require.Equal(t, cli.ExitOK, code, "wallets-worker %s:\n%s", strings.Join(args, " "), out.String())

	flagLine := regexp.MustCompile(`^  --([a-z0-9-]+)(?: (\S+))?$`)
	envLine := regexp.MustCompile(`^\s+\[\$(` + cli.EnvPrefix + `[A-Z0-9_]+)\]$`)
	defaultOf := regexp.MustCompile(`\(default (.+)\)$`)
	flags := flagSet{}
	var cur *flagSpec
	var lastText string
	for line := range strings.Lines(out.String()) {
		line = strings.TrimRight(line, "\n")
		if m := flagLine.FindStringSubmatch(line); m != nil {
			cur, lastText = &flagSpec{name: m[1], typ: m[2]}, ""
			continue
		}
		if cur == nil {
			continue
		}
		if m := envLine.FindStringSubmatch(line); m != nil {
			require.Equal(t, cli.EnvName(cur.name), m[1], "environment variable of --%s", cur.name)
			if d := defaultOf.FindStringSubmatch(lastText); d != nil {
				cur.def = d[1]
			}
			flags[m[1]] = *cur
			cur = nil
			continue
		}
		lastText = strings.TrimSpace(line)
	}
	require.GreaterOrEqual(t, len(flags), 3, "no flags read from:\n%s", out.String())
	return flags
}

// checkEnv reports an error unless name is the environment variable of a flag
// in fs and value parses as that flag's type. Variables without the prefix are
// not the worker's and pass.
func (fs flagSet) checkEnv(name, value string) error {
	if !strings.HasPrefix(name, cli.EnvPrefix) {
		return nil
	}
	f, ok := fs[name]
	if !ok {
		return fmt.Errorf("%s is no flag's environment variable", name)
	}
	var err error
	switch f.typ {
	case "":
		_, err = strconv.ParseBool(value)
	case "duration":
		_, err = time.ParseDuration(value)
	case "int":
		_, err = strconv.ParseInt(value, 0, 64)
	case "uint":
		_, err = strconv.ParseUint(value, 0, 64)
	case "float":
		_, err = strconv.ParseFloat(value, 64)
	}
	if err != nil {
		return fmt.Errorf("%s=%q is no valid --%s %s: %w", name, value, f.name, f.typ, err)
	}
	return nil
}

// checkArgs reports an error unless every --flag in args is a flag of fs.
func (fs flagSet) checkArgs(args []string) error {
	var errs []error
	for _, a := range args {
		if !strings.HasPrefix(a, "-") {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if _, ok := fs[cli.EnvName(name)]; !ok {
			errs = append(errs, fmt.Errorf("%s is no flag", a))
		}
	}
	return errors.Join(errs...)
}

// checkPinned reports an error unless image names a tag other than latest, or
// a digest.
func checkPinned(image string) error {
	if strings.Contains(image, "@sha256:") {
		return nil
	}
	slash := strings.LastIndex(image, "/")
	colon := strings.LastIndex(image, ":")
	if colon < slash+1 || colon == len(image)-1 {
		return fmt.Errorf("image %q has no tag", image)
	}
	if tag := image[colon+1:]; tag == "latest" {
		return fmt.Errorf("image %q is not pinned", image)
	}
	return nil
}

func imageTag(image string) string {
	image, _, _ = strings.Cut(image, "@")
	if colon := strings.LastIndex(image, ":"); colon > strings.LastIndex(image, "/") {
		return image[colon+1:]
	}
	return ""
}

// --- Dockerfile --------------------------------------------------------------

// instruction is one Dockerfile instruction, continuation lines joined.
type instruction struct {
	cmd  string // upper case
	args string
}

// stage is one FROM and the instructions under it.
type stage struct {
	from  string // the FROM line's arguments
	image string // the base image (or an earlier stage's name)
	name  string // AS name, "" if none
	body  []instruction
}

func readDockerfile(t *testing.T) []stage {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(repoRoot, "Dockerfile"))
	require.NoError(t, err)
	var stages []stage
	var pending strings.Builder
	for line := range strings.Lines(string(raw)) {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "#") || (trimmed == "" && pending.Len() == 0) {
			continue
		}
		if body, ok := strings.CutSuffix(trimmed, `\`); ok {
			pending.WriteString(body + " ")
			continue
		}
		pending.WriteString(trimmed)
		text := pending.String()
		pending.Reset()
		cmd, args, _ := strings.Cut(text, " ")
		ins := instruction{cmd: strings.ToUpper(cmd), args: strings.TrimSpace(args)}
		if ins.cmd == "FROM" {
			st := stage{from: ins.args}
			fields := strings.Fields(ins.args)
			for i := 0; i < len(fields); i++ {
				switch {
				case strings.HasPrefix(fields[i], "--"):
				case strings.EqualFold(fields[i], "AS") && i+1 < len(fields):
					st.name = fields[i+1]
					i++
				default:
					st.image = fields[i]
				}
			}
			stages = append(stages, st)
			continue
		}
		require.NotEmpty(t, stages, "Dockerfile: %s before the first FROM", ins.cmd)
		stages[len(stages)-1].body = append(stages[len(stages)-1].body, ins)
	}
	require.Zero(t, pending.Len(), "Dockerfile ends in a continuation line")
	return stages
}

func (s stage) all(cmd string) []string {
	var out []string
	for _, ins := range s.body {
		if ins.cmd == cmd {
			out = append(out, ins.args)
		}
	}
	return out
}

// execForm decodes a JSON-array ENTRYPOINT or CMD.
func execForm(t *testing.T, args string) []string {
	t.Helper()
	var v []string
	require.NoError(t, json.Unmarshal([]byte(args), &v), "%q is not the exec (JSON array) form", args)
	return v
}

// copiedTo lists the destinations of the COPY instructions of s.
func (s stage) copiedTo() []string {
	var out []string
	for _, args := range s.all("COPY") {
		fields := strings.Fields(args)
		out = append(out, fields[len(fields)-1])
	}
	return out
}

// envs lists the KEY=value pairs of the ENV instructions of s.
func (s stage) envs(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, args := range s.all("ENV") {
		for _, kv := range strings.Fields(args) {
			k, v, ok := strings.Cut(kv, "=")
			require.True(t, ok, "ENV %s: use the KEY=value form", args)
			out[k] = strings.Trim(v, `"`)
		}
	}
	return out
}

func goMinor(t *testing.T) string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(repoRoot, "go.mod"))
	require.NoError(t, err)
	m := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindSubmatch(raw)
	require.NotNil(t, m, "go.mod has no go directive")
	return string(m[1])
}

func TestDockerfile(t *testing.T) {
	t.Parallel()
	b := setup(t)
	stages := readDockerfile(t)
	require.GreaterOrEqual(t, len(stages), 2, "the Dockerfile is multi-stage: build, then a minimal runtime")
	names := map[string]bool{}
	for _, st := range stages {
		if !names[st.image] && st.image != "scratch" {
			require.NoError(t, checkPinned(st.image), "FROM %s", st.from)
		}
		if st.name != "" {
			names[st.name] = true
		}
	}

	t.Run("the build stage makes a static, trimmed binary with the go.mod Go", func(t *testing.T) {
		t.Parallel()
		build := stages[0]
		require.True(t, strings.HasPrefix(build.image, "golang:"+goMinor(t)), "builder %s does not match go.mod's go %s", build.image, goMinor(t))
		runs := strings.Join(build.all("RUN"), "\n")
		for _, want := range []string{"CGO_ENABLED=0", "-trimpath", `-ldflags "-s -w"`, "./cmd/wallets-worker"} {
			require.Contains(t, runs, want)
		}
	})

	t.Run("the runtime stage is minimal, non-root and runs the worker", func(t *testing.T) {
		t.Parallel()
		final := stages[len(stages)-1]
		require.False(t, names[final.image], "the runtime stage starts from a base image, not from a build stage")
		require.True(t, final.image == "scratch" || strings.HasPrefix(final.image, "gcr.io/distroless/static"),
			"runtime base %s: want distroless static or scratch", final.image)
		users := final.all("USER")
		nonrootBase := strings.Contains(imageTag(final.image), "nonroot")
		require.True(t, nonrootBase || len(users) > 0, "the runtime stage runs as root")
		if len(users) > 0 {
			user, _, _ := strings.Cut(users[len(users)-1], ":")
			require.NotContains(t, []string{"root", "0"}, user, "USER %s", users[len(users)-1])
		}
		if final.image == "scratch" {
			require.True(t, slices.ContainsFunc(final.copiedTo(), func(d string) bool { return strings.Contains(d, "ca-certificates") }),
				"a scratch image needs CA certificates for an https ledger or token URL")
		}

		entry := final.all("ENTRYPOINT")
		require.Len(t, entry, 1)
		ep := execForm(t, entry[0])
		require.Len(t, ep, 1)
		require.True(t, strings.HasSuffix(ep[0], "/wallets-worker"), "ENTRYPOINT %v", ep)
		require.Contains(t, final.copiedTo(), ep[0], "the ENTRYPOINT binary is copied into the runtime stage")
		cmds := final.all("CMD")
		require.NotEmpty(t, cmds)
		require.Equal(t, []string{"run"}, execForm(t, cmds[len(cmds)-1]))

		require.Contains(t, strings.Fields(strings.Join(final.all("EXPOSE"), " ")), "9090")
		env := final.envs(t)
		require.Equal(t, "0.0.0.0:9090", env["WALLETS_WORKER_HTTP_ADDR"], "in a container /healthz must listen beyond loopback")
		for k, v := range env {
			require.NoError(t, b.run.checkEnv(k, v), "Dockerfile ENV")
		}
	})

	t.Run(".dockerignore keeps junk out and the sources in", func(t *testing.T) {
		t.Parallel()
		raw, err := os.ReadFile(filepath.Join(repoRoot, ".dockerignore"))
		require.NoError(t, err)
		var patterns []string
		for line := range strings.Lines(string(raw)) {
			if p := strings.TrimSpace(line); p != "" && !strings.HasPrefix(p, "#") {
				patterns = append(patterns, strings.TrimSuffix(strings.TrimPrefix(p, "/"), "/"))
			}
		}
		for _, want := range []string{".git", "data", "bin"} {
			require.Contains(t, patterns, want)
		}
		for _, keep := range []string{"go.mod", "go.sum", "cmd/wallets-worker/main.go", "internal/cli/run.go", "deploy/healthprobe/main.go"} {
			for _, p := range patterns {
				for prefix := keep; prefix != "."; prefix = filepath.Dir(prefix) {
					matched, err := filepath.Match(p, prefix)
					require.NoError(t, err)
					require.False(t, matched, ".dockerignore %q excludes %s", p, keep)
				}
			}
		}
	})
}

// --- docker-compose.yml ------------------------------------------------------

func loadCompose(t *testing.T) *composetypes.Project {
	t.Helper()
	return loadComposeWith(t, nil, nil)
}

// loadComposeWith loads docker-compose.yml with env as the only environment
// ("NAME=value") and profiles enabled.
func loadComposeWith(t *testing.T, env, profiles []string) *composetypes.Project {
	t.Helper()
	abs, err := filepath.Abs(repoRoot)
	require.NoError(t, err)
	opts, err := composecli.NewProjectOptions(
		[]string{filepath.Join(abs, "docker-compose.yml")},
		composecli.WithWorkingDirectory(abs),
		// No environment from this machine: what the file says is what is checked.
		composecli.WithEnv(env),
		composecli.WithoutEnvironmentResolution,
		composecli.WithProfiles(profiles),
	)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p, err := opts.LoadProject(ctx)
	require.NoError(t, err, "docker-compose.yml")
	return p
}

func environment(t *testing.T, svc composetypes.ServiceConfig) map[string]string {
	t.Helper()
	out := map[string]string{}
	for k, v := range svc.Environment {
		require.NotNil(t, v, "service %s: %s has no value in the file", svc.Name, k)
		out[k] = *v
	}
	return out
}

func TestCompose(t *testing.T) {
	t.Parallel()
	b := setup(t)
	p := loadCompose(t)
	require.Subset(t, p.ServiceNames(), []string{"nats", "postgres", "ledger", "worker", "publish-sample"})
	svc := func(t *testing.T, name string) composetypes.ServiceConfig {
		t.Helper()
		s, err := p.GetService(name)
		require.NoError(t, err)
		return s
	}
	abs, err := filepath.Abs(repoRoot)
	require.NoError(t, err)

	t.Run("images are pinned; the ledger is a v2.4 release", func(t *testing.T) {
		t.Parallel()
		for _, s := range p.Services {
			require.NotEmpty(t, s.Image, "service %s", s.Name)
			require.NoError(t, checkPinned(s.Image), "service %s", s.Name)
		}
		ledger := svc(t, "ledger").Image
		require.True(t, strings.HasPrefix(ledger, "ghcr.io/formancehq/ledger:"), ledger)
		require.True(t, strings.HasPrefix(imageTag(ledger), "v2.4."), "ledger %s: the client speaks Ledger v2.4", ledger)
		env := environment(t, svc(t, "ledger"))
		require.NotEmpty(t, env["POSTGRES_URI"])
		require.Equal(t, "true", env["AUTO_UPGRADE"])
	})

	t.Run("start order waits on health", func(t *testing.T) {
		t.Parallel()
		wants := map[string][]string{
			"ledger":         {"postgres"},
			"worker":         {"nats", "ledger"},
			"publish-sample": {"worker"},
		}
		for name, deps := range wants {
			for _, dep := range deps {
				d, ok := svc(t, name).DependsOn[dep]
				require.True(t, ok, "%s does not depend on %s", name, dep)
				require.Equal(t, composetypes.ServiceConditionHealthy, d.Condition, "%s on %s", name, dep)
			}
		}
	})

	t.Run("long-running services have health checks", func(t *testing.T) {
		t.Parallel()
		wants := map[string][]string{
			"nats":     {":8222/healthz"},
			"postgres": {"pg_isready"},
			"ledger":   {":3068/_healthcheck"},
			"worker":   {":9090/readyz"},
		}
		for name, parts := range wants {
			hc := svc(t, name).HealthCheck
			require.NotNil(t, hc, "service %s", name)
			require.False(t, hc.Disable, "service %s", name)
			require.NotEmpty(t, hc.Test, "service %s", name)
			require.Contains(t, []string{"CMD", "CMD-SHELL"}, hc.Test[0], "service %s", name)
			for _, part := range parts {
				require.Contains(t, strings.Join(hc.Test, " "), part, "service %s", name)
			}
		}
		// The worker image has no shell: its check is a binary the Dockerfile copies in.
		test := svc(t, "worker").HealthCheck.Test
		require.Equal(t, "CMD", test[0])
		stages := readDockerfile(t)
		require.Contains(t, stages[len(stages)-1].copiedTo(), test[1], "worker health check binary")
	})

	t.Run("three workers built from the Dockerfile, drained before SIGKILL", func(t *testing.T) {
		t.Parallel()
		w := svc(t, "worker")
		require.NotNil(t, w.Deploy)
		require.NotNil(t, w.Deploy.Replicas)
		require.Equal(t, 3, *w.Deploy.Replicas)
		require.Empty(t, w.ContainerName, "a fixed container name allows one replica")
		require.NotNil(t, w.Build)
		require.Equal(t, abs, w.Build.Context)
		require.Equal(t, "Dockerfile", w.Build.Dockerfile)
		pub := svc(t, "publish-sample")
		require.Equal(t, w.Image, pub.Image, "publish-sample runs the worker image")
		require.Equal(t, w.Build, pub.Build)

		drain := b.drainDefault
		if v, ok := environment(t, w)["WALLETS_WORKER_DRAIN_TIMEOUT"]; ok {
			d, err := time.ParseDuration(v)
			require.NoError(t, err)
			drain = d
		}
		require.NotNil(t, w.StopGracePeriod, "compose's default 10s would cut the drain short")
		require.GreaterOrEqual(t, time.Duration(*w.StopGracePeriod), drain+drainMargin,
			"stop_grace_period vs --drain-timeout %s", drain)
	})

	t.Run("every WALLETS_WORKER_ variable is a real flag", func(t *testing.T) {
		t.Parallel()
		for name, flags := range map[string]flagSet{"worker": b.run, "publish-sample": b.publish} {
			for k, v := range environment(t, svc(t, name)) {
				require.NoError(t, flags.checkEnv(k, v), "service %s", name)
			}
		}
		env := environment(t, svc(t, "worker"))
		host, port, err := net.SplitHostPort(env["WALLETS_WORKER_HTTP_ADDR"])
		require.NoError(t, err)
		require.Equal(t, "9090", port)
		require.Contains(t, []string{"", "0.0.0.0", "::"}, host, "in a container /healthz must listen beyond loopback")
		for _, name := range []string{"worker", "publish-sample"} {
			natsURL := environment(t, svc(t, name))["WALLETS_WORKER_NATS_URL"]
			requireServiceURL(t, p, natsURL, "nats", "4222")
		}
		requireServiceURL(t, p, env["WALLETS_WORKER_LEDGER_URL"], "ledger", "3068")
	})

	t.Run("publish-sample runs publish create-balance with real flags", func(t *testing.T) {
		t.Parallel()
		cmd := []string(svc(t, "publish-sample").Command)
		require.GreaterOrEqual(t, len(cmd), 2)
		require.Equal(t, []string{"publish", "create-balance"}, cmd[:2])
		require.NoError(t, b.publish.checkArgs(cmd[2:]))
		for _, want := range []string{"--wallet", "--name", "--wait"} {
			require.Contains(t, cmd, want)
		}
	})
}

// TestComposeNATSIsAuthorized: the compose stack's NATS runs
// deploy/nats/auth.conf (the secure set-up is the default one): its
// configuration, mounted from the repository, loads in a real nats-server
// with the passwords compose gives it, and the workers and the sample
// publisher connect as the users auth.conf defines, with those passwords.
func TestComposeNATSIsAuthorized(t *testing.T) {
	p := loadCompose(t)
	natsSvc, err := p.GetService("nats")
	require.NoError(t, err)
	cmd := []string(natsSvc.Command)
	require.Len(t, cmd, 2)
	require.Equal(t, "-c", cmd[0])
	conf := ""
	for _, v := range natsSvc.Volumes {
		if rel, err := filepath.Rel(v.Target, cmd[1]); err == nil && !strings.HasPrefix(rel, "..") && v.Type == "bind" {
			conf = filepath.Join(v.Source, rel)
		}
	}
	require.NotEmpty(t, conf, "%s is mounted from the repository", cmd[1])
	raw, err := os.ReadFile(conf)
	require.NoError(t, err)
	require.Regexp(t, `(?m)^include \./auth\.conf$`, string(raw))

	natsEnv := environment(t, natsSvc)
	for k, v := range natsEnv {
		t.Setenv(k, v)
	}
	opts, err := server.ProcessConfigFile(conf)
	require.NoError(t, err, "the compose NATS configuration loads")
	require.True(t, opts.JetStream)
	require.Empty(t, opts.NoAuthUser, "no connection without credentials")
	passwords := map[string]string{}
	for _, u := range opts.Users {
		passwords[u.Username] = u.Password
	}
	for name, user := range map[string]string{"worker": "wallets-worker", "publish-sample": "wallets-producer"} {
		svc, err := p.GetService(name)
		require.NoError(t, err)
		env := environment(t, svc)
		require.Equal(t, user, env["WALLETS_WORKER_NATS_USER"], "service %s", name)
		require.NotEmpty(t, passwords[user], "auth.conf defines %s", user)
		require.Equal(t, passwords[user], env["WALLETS_WORKER_NATS_PASSWORD"], "service %s connects with the password NATS has for %s", name, user)
	}
}

// requireServiceURL checks that raw points at service's port inside the
// compose network.
func requireServiceURL(t *testing.T, p *composetypes.Project, raw, service, port string) {
	t.Helper()
	u, err := url.Parse(raw)
	require.NoError(t, err)
	require.Equal(t, service, u.Hostname(), "%s", raw)
	require.Equal(t, port, u.Port(), "%s", raw)
	require.Contains(t, p.ServiceNames(), service)
}

// --- deploy/kubernetes -------------------------------------------------------

// kustomization is the part of a kustomization.yaml this directory uses.
type kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Resources  []string `json:"resources"`
}

// manifests is every object of deploy/kubernetes, decoded.
type manifests struct {
	files         []string // base names of the YAML files
	kustomization *kustomization
	deployment    *appsv1.Deployment
	pdb           *policyv1.PodDisruptionBudget
	service       *corev1.Service
	configMap     *corev1.ConfigMap
	secret        *corev1.Secret
	hpa           *autoscalingv2.HorizontalPodAutoscaler
}

// decodeStrict decodes doc into a new T and fails on any field T does not
// have, on a duplicate key, and on a key spelt in another case: the API server
// matches names case-sensitively and drops what it does not know, so a
// misspelt or misplaced field would otherwise be lost without a word.
// (encoding/json, under sigs.k8s.io/yaml, matches names case-insensitively.)
func decodeStrict[T any](t *testing.T, where string, doc []byte, slot **T) {
	t.Helper()
	require.Nil(t, *slot, "%s: a second object of this kind", where)
	js, err := yaml.YAMLToJSONStrict(doc)
	require.NoError(t, err, "%s", where)
	obj := new(T)
	strictErrs, err := k8sjson.UnmarshalStrict(js, obj)
	require.NoError(t, err, "%s", where)
	require.NoError(t, errors.Join(strictErrs...), "%s", where)
	*slot = obj
}

func loadManifests(t *testing.T) manifests {
	t.Helper()
	dir := filepath.Join(repoRoot, "deploy", "kubernetes")
	paths, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	require.NoError(t, err)
	require.NotEmpty(t, paths)
	var m manifests
	for _, path := range paths {
		m.files = append(m.files, filepath.Base(path))
		f, err := os.Open(path)
		require.NoError(t, err)
		r := k8syaml.NewYAMLReader(bufio.NewReader(f))
		for i := 0; ; i++ {
			doc, err := r.Read()
			if errors.Is(err, io.EOF) {
				break
			}
			require.NoError(t, err, path)
			where := fmt.Sprintf("%s, document %d", filepath.Base(path), i+1)
			var tm metav1.TypeMeta
			require.NoError(t, yaml.Unmarshal(doc, &tm), where)
			if tm.Kind == "" {
				var rest map[string]any
				require.NoError(t, yaml.Unmarshal(doc, &rest), where)
				require.Empty(t, rest, "%s: an object without a kind", where)
				continue // only comments
			}
			switch gvk := tm.APIVersion + " " + tm.Kind; gvk {
			case "kustomize.config.k8s.io/v1beta1 Kustomization":
				decodeStrict(t, where, doc, &m.kustomization)
			case "apps/v1 Deployment":
				decodeStrict(t, where, doc, &m.deployment)
			case "policy/v1 PodDisruptionBudget":
				decodeStrict(t, where, doc, &m.pdb)
			case "v1 Service":
				decodeStrict(t, where, doc, &m.service)
			case "v1 ConfigMap":
				decodeStrict(t, where, doc, &m.configMap)
			case "v1 Secret":
				decodeStrict(t, where, doc, &m.secret)
			case "autoscaling/v2 HorizontalPodAutoscaler":
				decodeStrict(t, where, doc, &m.hpa)
			default:
				t.Fatalf("%s: unexpected %s", where, gvk)
			}
		}
		require.NoError(t, f.Close())
	}
	for name, present := range map[string]bool{
		"kustomization": m.kustomization != nil, "Deployment": m.deployment != nil, "PodDisruptionBudget": m.pdb != nil,
		"Service": m.service != nil, "ConfigMap": m.configMap != nil, "Secret": m.secret != nil, "HorizontalPodAutoscaler": m.hpa != nil,
	} {
		require.True(t, present, "deploy/kubernetes has no %s", name)
	}
	return m
}

// workerContainer is the Deployment's container that runs the worker.
func (m manifests) workerContainer(t *testing.T) corev1.Container {
	t.Helper()
	cs := m.deployment.Spec.Template.Spec.Containers
	require.Len(t, cs, 1)
	return cs[0]
}

// containerPort resolves a probe's or Service's port, by number or by name.
func containerPort(t *testing.T, c corev1.Container, p intstr.IntOrString) int32 {
	t.Helper()
	if p.Type == intstr.Int {
		return p.IntVal
	}
	for _, cp := range c.Ports {
		if cp.Name == p.StrVal {
			return cp.ContainerPort
		}
	}
	t.Fatalf("container %s has no port named %q", c.Name, p.StrVal)
	return 0
}

func requireSelects(t *testing.T, what string, sel *metav1.LabelSelector, podLabels map[string]string) {
	t.Helper()
	require.NotNil(t, sel, "%s has no selector", what)
	s, err := metav1.LabelSelectorAsSelector(sel)
	require.NoError(t, err, what)
	require.False(t, s.Empty(), "%s selects every pod", what)
	require.True(t, s.Matches(labels.Set(podLabels)), "%s selector %s misses the worker pods %v", what, s, podLabels)
}

// goMemLimit parses a GOMEMLIMIT value (a byte count with an optional B, KiB,
// MiB, GiB or TiB suffix).
func goMemLimit(t *testing.T, v string) int64 {
	t.Helper()
	// Longest suffix first: "B" ends every other one.
	for _, u := range []struct {
		suffix string
		shift  uint
	}{{"TiB", 40}, {"GiB", 30}, {"MiB", 20}, {"KiB", 10}, {"B", 0}} {
		if n, ok := strings.CutSuffix(v, u.suffix); ok {
			i, err := strconv.ParseInt(n, 10, 64)
			require.NoError(t, err, "GOMEMLIMIT=%s", v)
			return i << u.shift
		}
	}
	i, err := strconv.ParseInt(v, 10, 64)
	require.NoError(t, err, "GOMEMLIMIT=%s", v)
	return i
}

func TestKubernetes(t *testing.T) {
	t.Parallel()
	b := setup(t)
	m := loadManifests(t)
	pod := m.deployment.Spec.Template
	c := m.workerContainer(t)

	t.Run("kustomization lists every manifest but the optional HPA", func(t *testing.T) {
		t.Parallel()
		var want []string
		for _, f := range m.files {
			if f != "kustomization.yaml" && f != "hpa.yaml" {
				want = append(want, f)
			}
		}
		require.ElementsMatch(t, want, m.kustomization.Resources)
	})

	t.Run("three replicas whose selector matches their pods", func(t *testing.T) {
		t.Parallel()
		require.NotNil(t, m.deployment.Spec.Replicas)
		require.EqualValues(t, 3, *m.deployment.Spec.Replicas)
		requireSelects(t, "Deployment", m.deployment.Spec.Selector, pod.Labels)
		require.NoError(t, checkPinned(c.Image))
	})

	t.Run("probes: readiness /readyz, liveness and startup /healthz, on 9090", func(t *testing.T) {
		t.Parallel()
		require.Contains(t, c.Ports, corev1.ContainerPort{Name: "http", ContainerPort: 9090, Protocol: corev1.ProtocolTCP})
		for name, probe := range map[string]struct {
			p    *corev1.Probe
			path string
		}{
			"readiness": {c.ReadinessProbe, "/readyz"},
			"liveness":  {c.LivenessProbe, "/healthz"},
			"startup":   {c.StartupProbe, "/healthz"},
		} {
			require.NotNil(t, probe.p, "%s probe", name)
			require.NotNil(t, probe.p.HTTPGet, "%s probe", name)
			require.Equal(t, probe.path, probe.p.HTTPGet.Path, "%s probe", name)
			require.EqualValues(t, 9090, containerPort(t, c, probe.p.HTTPGet.Port), "%s probe", name)
		}
	})

	t.Run("the grace period outlasts the drain", func(t *testing.T) {
		t.Parallel()
		drain := b.drainDefault
		if v, ok := m.configMap.Data["WALLETS_WORKER_DRAIN_TIMEOUT"]; ok {
			d, err := time.ParseDuration(v)
			require.NoError(t, err)
			drain = d
		}
		grace := m.deployment.Spec.Template.Spec.TerminationGracePeriodSeconds
		require.NotNil(t, grace)
		require.GreaterOrEqual(t, time.Duration(*grace)*time.Second, drain+drainMargin,
			"terminationGracePeriodSeconds %d vs --drain-timeout %s", *grace, drain)
	})

	t.Run("non-root, read-only, no capabilities", func(t *testing.T) {
		t.Parallel()
		psc := pod.Spec.SecurityContext
		require.NotNil(t, psc)
		require.NotNil(t, psc.RunAsNonRoot)
		require.True(t, *psc.RunAsNonRoot)
		if psc.RunAsUser != nil {
			require.NotZero(t, *psc.RunAsUser)
		}
		sc := c.SecurityContext
		require.NotNil(t, sc)
		require.NotNil(t, sc.ReadOnlyRootFilesystem)
		require.True(t, *sc.ReadOnlyRootFilesystem)
		require.NotNil(t, sc.AllowPrivilegeEscalation)
		require.False(t, *sc.AllowPrivilegeEscalation)
		require.NotNil(t, sc.Capabilities)
		require.Contains(t, sc.Capabilities.Drop, corev1.Capability("ALL"))
	})

	t.Run("resources are bounded", func(t *testing.T) {
		t.Parallel()
		req, lim := c.Resources.Requests, c.Resources.Limits
		require.False(t, req.Cpu().IsZero(), "a CPU request (the HPA's utilization is relative to it)")
		require.False(t, req.Memory().IsZero(), "a memory request")
		require.False(t, lim.Memory().IsZero(), "a memory limit")
		require.LessOrEqual(t, req.Memory().Cmp(*lim.Memory()), 0)
		for _, e := range c.Env {
			if e.Name == "GOMEMLIMIT" {
				require.Less(t, goMemLimit(t, e.Value), lim.Memory().Value(), "GOMEMLIMIT must stay below the memory limit")
			}
		}
	})

	t.Run("every WALLETS_WORKER_ variable is a real run flag, set once", func(t *testing.T) {
		t.Parallel()
		// Service links would add WALLETS_WORKER_SERVICE_HOST and friends
		// for the Service named wallets-worker.
		require.NotNil(t, pod.Spec.EnableServiceLinks)
		require.False(t, *pod.Spec.EnableServiceLinks)

		set := map[string]string{} // variable -> where
		for k, v := range m.configMap.Data {
			require.True(t, strings.HasPrefix(k, cli.EnvPrefix), "ConfigMap key %s: envFrom would hand it to the worker", k)
			require.NoError(t, b.run.checkEnv(k, v), "ConfigMap")
		}
		require.Len(t, c.EnvFrom, 1)
		require.NotNil(t, c.EnvFrom[0].ConfigMapRef)
		require.Equal(t, m.configMap.Name, c.EnvFrom[0].ConfigMapRef.Name)
		require.Empty(t, c.EnvFrom[0].Prefix)
		for k := range m.configMap.Data {
			set[k] = "ConfigMap"
		}
		for _, e := range c.Env {
			require.NotContains(t, set, e.Name, "%s is set twice", e.Name)
			set[e.Name] = "env"
			switch {
			case e.ValueFrom == nil:
				require.NoError(t, b.run.checkEnv(e.Name, e.Value), "env")
			case e.ValueFrom.SecretKeyRef != nil:
				ref := e.ValueFrom.SecretKeyRef
				require.NoError(t, b.run.checkEnv(e.Name, ""), "env")
				require.Equal(t, m.secret.Name, ref.Name, "%s", e.Name)
				_, inString := m.secret.StringData[ref.Key]
				_, inData := m.secret.Data[ref.Key]
				require.True(t, inString || inData, "Secret %s has no key %s", ref.Name, ref.Key)
			default:
				t.Fatalf("env %s: unexpected source", e.Name)
			}
		}
		require.Equal(t, "env", set["WALLETS_WORKER_LEDGER_CLIENT_SECRET"], "the OAuth2 client secret comes from the Secret")

		// run refuses one of these without the others.
		oauth := []string{"WALLETS_WORKER_LEDGER_CLIENT_ID", "WALLETS_WORKER_LEDGER_CLIENT_SECRET", "WALLETS_WORKER_LEDGER_TOKEN_URL"}
		n := 0
		for _, k := range oauth {
			if _, ok := set[k]; ok {
				n++
			}
		}
		require.True(t, n == 0 || n == len(oauth), "set all or none of %v", oauth)

		for _, k := range []string{"WALLETS_WORKER_NATS_URL", "WALLETS_WORKER_LEDGER_URL"} {
			require.NotEmpty(t, m.configMap.Data[k], "without %s the worker starts an embedded server", k)
		}
		host, port, err := net.SplitHostPort(m.configMap.Data["WALLETS_WORKER_HTTP_ADDR"])
		require.NoError(t, err)
		require.Contains(t, []string{"", "0.0.0.0", "::"}, host, "the kubelet probes the pod IP")
		require.Equal(t, strconv.Itoa(int(containerPort(t, c, intstr.FromString("http")))), port)
	})

	t.Run("the NATS password file is the Secret's, mounted where the ConfigMap says", func(t *testing.T) {
		t.Parallel()
		file := m.configMap.Data["WALLETS_WORKER_NATS_PASSWORD_FILE"]
		require.NotEmpty(t, file, "the worker authenticates as the NATS user of deploy/nats/auth.conf")
		var mount *corev1.VolumeMount
		for i, vm := range c.VolumeMounts {
			if strings.HasPrefix(file, strings.TrimSuffix(vm.MountPath, "/")+"/") {
				mount = &c.VolumeMounts[i]
			}
		}
		require.NotNil(t, mount, "no volume mounted above %s", file)
		require.Empty(t, mount.SubPath, "a subPath mount never sees an updated Secret")
		var vol *corev1.Volume
		for i, v := range pod.Spec.Volumes {
			if v.Name == mount.Name {
				vol = &pod.Spec.Volumes[i]
			}
		}
		require.NotNil(t, vol, "volume %s", mount.Name)
		require.NotNil(t, vol.Secret, "volume %s is a Secret", mount.Name)
		require.Equal(t, m.secret.Name, vol.Secret.SecretName)
		rel := strings.TrimPrefix(file, strings.TrimSuffix(mount.MountPath, "/")+"/")
		found := false
		for _, item := range vol.Secret.Items {
			if item.Path == rel {
				_, inString := m.secret.StringData[item.Key]
				_, inData := m.secret.Data[item.Key]
				require.True(t, inString || inData, "Secret %s has no key %s", m.secret.Name, item.Key)
				found = true
			}
		}
		require.True(t, found, "the Secret volume has no item at %s", rel)
		require.NotEmpty(t, m.configMap.Data["WALLETS_WORKER_NATS_USER"], "a password file needs its user")
	})

	t.Run("the Service and the PDB select the worker pods", func(t *testing.T) {
		t.Parallel()
		requireSelects(t, "Service", &metav1.LabelSelector{MatchLabels: m.service.Spec.Selector}, pod.Labels)
		require.Len(t, m.service.Spec.Ports, 1)
		require.EqualValues(t, 9090, containerPort(t, c, m.service.Spec.Ports[0].TargetPort))

		requireSelects(t, "PodDisruptionBudget", m.pdb.Spec.Selector, pod.Labels)
		require.Equal(t, m.deployment.Spec.Selector, m.pdb.Spec.Selector)
		spec := m.pdb.Spec
		require.True(t, (spec.MaxUnavailable == nil) != (spec.MinAvailable == nil), "set one of maxUnavailable, minAvailable")
		if spec.MaxUnavailable != nil {
			require.Equal(t, intstr.FromInt32(1), *spec.MaxUnavailable)
		} else {
			require.Less(t, spec.MinAvailable.IntValue(), int(*m.deployment.Spec.Replicas), "the PDB would block every drain")
		}
	})

	t.Run("the HPA scales the Deployment on CPU", func(t *testing.T) {
		t.Parallel()
		ref := m.hpa.Spec.ScaleTargetRef
		require.Equal(t, autoscalingv2.CrossVersionObjectReference{APIVersion: "apps/v1", Kind: "Deployment", Name: m.deployment.Name}, ref)
		require.NotNil(t, m.hpa.Spec.MinReplicas)
		require.GreaterOrEqual(t, *m.hpa.Spec.MinReplicas, int32(2), "keep a worker up while the PDB lets one go")
		require.LessOrEqual(t, *m.hpa.Spec.MinReplicas, m.hpa.Spec.MaxReplicas)
		require.True(t, slices.ContainsFunc(m.hpa.Spec.Metrics, func(ms autoscalingv2.MetricSpec) bool {
			return ms.Type == autoscalingv2.ResourceMetricSourceType && ms.Resource != nil && ms.Resource.Name == corev1.ResourceCPU
		}), "a CPU metric")
	})

	t.Run("stream replicas fit the NATS cluster of the Helm values", func(t *testing.T) {
		t.Parallel()
		values := natsValues(t)
		replicas, err := strconv.Atoi(m.configMap.Data["WALLETS_WORKER_STREAM_REPLICAS"])
		require.NoError(t, err)
		require.Equal(t, values.Config.Cluster.Replicas, replicas)
	})
}

// --- deploy/nats-helm-values.yaml ---------------------------------------------

// natsHelmValues is the part of the NATS chart's values this file sets.
type natsHelmValues struct {
	Config struct {
		Cluster struct {
			Enabled  bool `json:"enabled"`
			Replicas int  `json:"replicas"`
		} `json:"cluster"`
		JetStream struct {
			Enabled   bool `json:"enabled"`
			FileStore struct {
				Enabled bool   `json:"enabled"`
				Dir     string `json:"dir"`
				PVC     struct {
					Enabled bool   `json:"enabled"`
					Size    string `json:"size"`
				} `json:"pvc"`
			} `json:"fileStore"`
		} `json:"jetstream"`
	} `json:"config"`
}

func natsValues(t *testing.T) natsHelmValues {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(repoRoot, "deploy", "nats-helm-values.yaml"))
	require.NoError(t, err)
	var v natsHelmValues
	// Not strict: the file sets more of the chart than this test reads.
	require.NoError(t, yaml.Unmarshal(raw, &v))
	return v
}

func TestNATSHelmValues(t *testing.T) {
	t.Parallel()
	v := natsValues(t)
	require.True(t, v.Config.Cluster.Enabled, "config.cluster.enabled")
	require.Equal(t, 3, v.Config.Cluster.Replicas, "config.cluster.replicas: an R3 stream needs three nodes")
	js := v.Config.JetStream
	require.True(t, js.Enabled, "config.jetstream.enabled")
	require.True(t, js.FileStore.Enabled, "config.jetstream.fileStore.enabled: the worker's streams are file-backed")
	require.NotEmpty(t, js.FileStore.Dir)
	require.True(t, js.FileStore.PVC.Enabled, "config.jetstream.fileStore.pvc.enabled: JetStream data outlives the pod")
	_, err := resource.ParseQuantity(js.FileStore.PVC.Size)
	require.NoError(t, err, "config.jetstream.fileStore.pvc.size")
}
