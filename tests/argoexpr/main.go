// Command argoexpr evaluates expressions with Argo Workflows' own code (v3.7.18), so the tests
// check the retry expressions and the podSpecPatch in argo/*.yaml as the controller reads them.
//
// It reads one JSON request on stdin and writes one JSON answer on stdout:
//
//	{"retry": [{"expression": "...", "scope": {"lastRetry.exitCode": "3", ...}}, ...],
//	 "substitute": [{"template": {...}, "global": {...}, "local": {...}}, ...]}
//
// "retry" items are evaluated as processNodeRetries does (env.GetFuncMap + argoexpr.EvalBool);
// "substitute" items go through common.SubstituteParams, the call executeTemplate makes once a
// retry's number and last exit code are known, and answer the substituted podSpecPatch.
package main

import (
	"encoding/json"
	"fmt"
	"os"

	wfv1 "github.com/argoproj/argo-workflows/v3/pkg/apis/workflow/v1alpha1"
	"github.com/argoproj/argo-workflows/v3/util/expr/argoexpr"
	"github.com/argoproj/argo-workflows/v3/util/expr/env"
	"github.com/argoproj/argo-workflows/v3/workflow/common"
)

type retryItem struct {
	Expression string            `json:"expression"`
	Scope      map[string]string `json:"scope"`
}

type substituteItem struct {
	Template wfv1.Template     `json:"template"`
	Global   map[string]string `json:"global"`
	Local    map[string]string `json:"local"`
}

type request struct {
	Retry      []retryItem      `json:"retry"`
	Substitute []substituteItem `json:"substitute"`
}

type answer struct {
	Value string `json:"value,omitempty"`
	Error string `json:"error,omitempty"`
}

func main() {
	var req request
	if err := json.NewDecoder(os.Stdin).Decode(&req); err != nil {
		fmt.Fprintln(os.Stderr, "argoexpr: bad request:", err)
		os.Exit(2)
	}
	out := map[string][]answer{"retry": {}, "substitute": {}}
	for _, item := range req.Retry {
		scope := map[string]interface{}{}
		for k, v := range item.Scope {
			scope[k] = v
		}
		ok, err := argoexpr.EvalBool(item.Expression, env.GetFuncMap(scope))
		if err != nil {
			out["retry"] = append(out["retry"], answer{Error: err.Error()})
		} else {
			out["retry"] = append(out["retry"], answer{Value: fmt.Sprint(ok)})
		}
	}
	for _, item := range req.Substitute {
		tmpl, err := common.SubstituteParams(&item.Template, item.Global, item.Local)
		if err != nil {
			out["substitute"] = append(out["substitute"], answer{Error: err.Error()})
		} else {
			out["substitute"] = append(out["substitute"], answer{Value: tmpl.PodSpecPatch})
		}
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		os.Exit(1)
	}
}
